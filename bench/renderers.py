"""The renderers fleet is compared with, producing the same outputs as ``imgworker.render``.

- :func:`independent`: the replaced design's three jobs, one full ``thumbnail`` decode per
  variant (still shrink-on-load, to isolate what the cascade saves).
- :func:`pillow`: the replaced design's library, Pillow with LANCZOS, one decode per upload;
  :class:`ExternalPillow` runs the same renderer under another interpreter (Pillow-SIMD).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

from bench import pillow_renderer
from bench.pillow_renderer import PillowVariant
from imgworker.render import RenderOptions, RenderRequest, RenderResult, render
from imgworker.render.storage import original_path


def independent(root: Path, request: RenderRequest, options: RenderOptions) -> list[RenderResult]:
    """Each variant rendered on its own from the original: three decodes for a big upload."""
    return [
        render(root, request, dataclasses.replace(options, variants=(variant,)))
        for variant in options.variants
    ]


def pillow(root: Path, request: RenderRequest, options: RenderOptions, out: Path) -> None:
    """The same variants with Pillow (LANCZOS), written under ``out``."""
    source = original_path(root, request.filename, request.ext)
    pillow_renderer.render(source, out, _variants(request, options))


class ExternalPillow:
    """The Pillow renderer as a script run by ``python`` (one with Pillow-SIMD installed), so
    that Pillow and only Pillow comes from that interpreter. :meth:`render` answers the
    CPU seconds the child measured, without the pipe's overhead."""

    def __init__(self, python: str) -> None:
        self._child = subprocess.Popen(
            [python, pillow_renderer.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = self._answer()
        self.version: str = hello["version"]
        missing = [name for name, ok in hello["codecs"].items() if not ok]
        if missing:
            self.close()
            raise RuntimeError(f"the Pillow of {python} ({self.version}) was built without {missing}")

    def render(self, root: Path, request: RenderRequest, options: RenderOptions, out: Path) -> float:
        line = {
            "source": str(original_path(root, request.filename, request.ext)),
            "out": str(out),
            "variants": _variants(request, options),
        }
        assert self._child.stdin is not None
        try:
            self._child.stdin.write(json.dumps(line) + "\n")
            self._child.stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"the Pillow child exited with {self._child.wait()}") from None
        return float(self._answer()["seconds"])

    def _answer(self) -> dict[str, Any]:
        assert self._child.stdout is not None
        answer = self._child.stdout.readline()
        if not answer:
            raise RuntimeError(f"the Pillow child exited with {self._child.wait()}")
        result: dict[str, Any] = json.loads(answer)
        return result

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            if self._child.stdin is not None:
                self._child.stdin.close()
        try:
            self._child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
        if self._child.stdout is not None:
            self._child.stdout.close()

    def __enter__(self) -> ExternalPillow:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _variants(request: RenderRequest, options: RenderOptions) -> list[PillowVariant]:
    return [
        PillowVariant(
            folder=v.folder,
            name=f"{request.filename}.{v.ext(request.ext)}",
            width=v.width,
            height=v.height,
            quality=v.quality,
            format=v.output_format(request.ext),
            sharpen=v.sharpen,
            always=v.always,
        )
        for v in options.variants
    ]
