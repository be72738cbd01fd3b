"""Paths under the storage root, and atomic writes.

Every path is built from the stored name alone (``{filename}.{ext}``), never from a date,
and must resolve inside the root: a job payload cannot make us read or write elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

from fleet.paths import UnsafePathError, check_name, inside
from imgworker.render.errors import MissingOriginalError, StorageError

ORIGINALS = "fullsize"


def original_path(root: Path, filename: str, ext: str) -> Path:
    check_name(filename, ext)
    path = inside(root, root / ORIGINALS / f"{filename}.{ext}")
    if not path.is_file():
        raise MissingOriginalError(f"original {ORIGINALS}/{filename}.{ext} does not exist")
    return path


def output_path(root: Path, folder: str, filename: str, ext: str, *, create: bool = True) -> Path:
    """Where an output goes; its folder is made unless ``create`` is False (only to remove one).

    The folder must resolve inside the root and the file must not be a symlink: a planted link
    is refused before anything is written or touched, wherever it leads."""
    check_name(filename, ext)
    directory = root / folder
    if create:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {directory}: {exc}") from exc
    return not_a_symlink(inside(root, directory) / f"{filename}.{ext}")


def not_a_symlink(path: Path) -> Path:
    """``path``, unless it is a symlink (we never write through one)."""
    if path.is_symlink():
        raise UnsafePathError(f"{path} is a symlink; refusing to write through it")
    return path


def atomic_write(path: Path, data: bytes) -> bool:
    """Write via a temp file in the same folder and rename: a killed writer never leaves a
    partial file at ``path``. Temp names start with '.' and end in '.tmp'.

    Returns False, writing nothing, when ``path`` already holds exactly ``data`` (its mtime
    is refreshed: the file is current for the settings that just produced it)."""
    with contextlib.suppress(OSError):
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            os.utime(path)
            return False
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {exc}") from exc
    return True


def remove_stale_temps(root: Path, folders: list[str], older_than_s: float = 600.0) -> int:
    """Delete temp files left by killed writers; returns how many were removed.

    Only old ones: a fresh temp file may belong to a replica writing right now."""
    removed = 0
    cutoff = time.time() - older_than_s
    for folder in folders:
        for tmp in (root / folder).glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
    return removed
