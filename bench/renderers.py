"""The renderers fleet is compared with, producing the same outputs as ``imgworker.render``.

- :func:`independent`: the replaced design's three jobs, one full ``thumbnail`` decode per
  variant (still shrink-on-load, to isolate what the cascade saves).
- :func:`pillow`: the replaced design's library, Pillow with LANCZOS, one decode per upload;
  :class:`ExternalPillow` runs the same renderer under another interpreter (Pillow-SIMD).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path
from types import TracebackType

from bench import pillow_renderer
from bench.pillow_renderer import PillowVariant
from imgworker.render import RenderOptions, RenderRequest, RenderResult, render
from imgworker.render.steps import FORMAT_OF_EXT
from imgworker.render.storage import original_path


def independent(root: Path, request: RenderRequest, options: RenderOptions) -> list[RenderResult]:
    """Each variant rendered on its own from the original: three decodes for a big upload."""
    return [
        render(root, request, dataclasses.replace(options, variants=(variant,)))
        for variant in options.variants
    ]


def pillow(root: Path, request: RenderRequest, options: RenderOptions, out: Path) -> None:
    """The same variants with Pillow (LANCZOS), written under ``out``."""
    pillow_renderer.render(
        original_path(root, request.filename, request.ext), out, request.filename, _variants(request, options)
    )


class ExternalPillow:
    """The Pillow renderer in a child process of ``python`` (one with Pillow-SIMD installed);
    :meth:`render` answers the seconds the child measured, without the pipe's overhead."""

    def __init__(self, python: str) -> None:
        self.python = python
        repo = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": str(repo)}
        self._child = subprocess.Popen(
            [python, "-m", "bench.pillow_renderer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def version(self) -> str:
        out = subprocess.run(
            [self.python, "-c", "import PIL; print(PIL.__version__)"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def render(self, root: Path, request: RenderRequest, options: RenderOptions, out: Path) -> float:
        assert self._child.stdin is not None and self._child.stdout is not None
        line = {
            "source": str(original_path(root, request.filename, request.ext)),
            "out": str(out),
            "filename": request.filename,
            "variants": _variants(request, options),
        }
        self._child.stdin.write(json.dumps(line) + "\n")
        self._child.stdin.flush()
        answer = self._child.stdout.readline()
        if not answer:
            raise RuntimeError(f"the Pillow child exited with {self._child.wait()}")
        return float(json.loads(answer)["seconds"])

    def __enter__(self) -> ExternalPillow:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._child.stdin is not None:
            self._child.stdin.close()
        self._child.wait(timeout=30)


def _variants(request: RenderRequest, options: RenderOptions) -> list[PillowVariant]:
    return [
        PillowVariant(
            folder=v.folder,
            edge=v.edge,
            quality=v.quality,
            format=v.format or FORMAT_OF_EXT[request.ext.lower()],
            always=v.always,
        )
        for v in options.variants
    ]
