"""``fleet render``: render originals in this process, no Redis, no pool (plugged into the
fleet CLI through the ``fleet.commands`` entry point)."""

from __future__ import annotations

import argparse
import dataclasses
import filecmp
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from fleet.board import Folder
from fleet.paths import UnsafePathError, inside
from fleet.settings import get_settings
from imgworker.backend import configure_vips
from imgworker.config import render_options
from imgworker.render import RenderRequest, RenderResult, render
from imgworker.render.storage import not_a_symlink


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "render", help="render originals in-process (no Redis) and report each result"
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument(
        "--storage",
        type=Path,
        help="storage root to write into (default: the root FILE is stored under, else STORAGE_PATH); "
        "a FILE outside ROOT/fullsize is copied there first",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="overwrite a different original already stored under the same name (refused without it)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    parser.set_defaults(run=run)


class OriginalExistsError(Exception):
    """Another original is stored under the name: STORAGE_PATH is usually the live archive."""


def stage(file: Path, storage: Path | None, replace: bool = False) -> tuple[Path, RenderRequest]:
    """The storage root and request for ``file``, copying it under ``root/fullsize`` if needed.

    A different original already stored under the name is never overwritten unless
    ``replace``: the board's originals are irreplaceable."""
    file = file.resolve()
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file")
    if storage is None:
        storage = file.parent.parent if file.parent.name == Folder.ORIGINALS else get_settings().storage_path
    stored = not_a_symlink(inside(storage, storage / Folder.ORIGINALS) / file.name)
    if stored != file:
        if stored.exists() and not replace and not filecmp.cmp(stored, file, shallow=False):
            raise OriginalExistsError(
                f"{Folder.ORIGINALS}/{stored.name} in {storage} is another original: not overwritten "
                "(--replace to overwrite it)"
            )
        stored.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, stored)
    filename, _, ext = file.name.rpartition(".")
    return storage, RenderRequest(0, filename or ext, ext if filename else "")


def describe(result: RenderResult) -> dict[str, Any]:
    data: dict[str, Any] = {"file": result.file, "ok": result.ok, "seconds": round(result.seconds, 4)}
    data["outputs"] = {
        name: {k: v for k, v in dataclasses.asdict(out).items() if k != "variant"}
        | {"status": out.status.name}
        for name, out in result.outputs.items()
    }
    if not result.ok:
        data["error"] = f"{result.error_type}: {result.error}"
    return data


def run(args: argparse.Namespace) -> int:
    configure_vips()
    options = render_options(get_settings())
    failed = 0
    for file in args.files:
        try:
            root, request = stage(file, args.storage, args.replace)
        except (UnsafePathError, OriginalExistsError, OSError) as exc:  # refused before any write; go on
            message = str(exc) if not isinstance(exc, OSError) else f"{file}: {exc.strerror or exc}"
            result = RenderResult(0, str(file), False, error=message, error_type=type(exc).__name__)
        else:
            result = render(root, request, options)
        result.file = str(file)
        failed += not result.ok
        data = describe(result)
        if args.json:
            print(json.dumps(data), flush=True)
        else:
            summary = ", ".join(f"{n} {o['status']}" for n, o in data["outputs"].items())
            print(
                f"{file}: {'ok' if result.ok else data['error']} {summary} ({result.seconds * 1000:.0f} ms)"
            )
    if failed:
        print(f"{failed} of {len(args.files)} failed", file=sys.stderr)
    return 1 if failed else 0
