"""pytest-benchmark suite: per-upload render time of the cascade, three independent renders
and Pillow, on one generated upload per format (fixed seed, big enough for all variants).

    uv run pytest bench/ --benchmark-only --benchmark-group-by=param:kind

Not part of `make test` (testpaths is tests/); `fleet bench` runs the full comparison.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import renderers
from fleet import corpus
from fleet.board import Folder
from fleet.render_settings import RenderSettings
from imgworker.backend import configure_vips
from imgworker.render import RenderOptions, RenderRequest, options_of, render

KINDS = corpus.KINDS


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, RenderRequest]]:
    configure_vips()
    root = tmp_path_factory.mktemp("bench")
    (root / Folder.ORIGINALS).mkdir()
    requests = {}
    for i, kind in enumerate(KINDS):
        sample = corpus.Sample(
            i + 1, f"2025-01-01-{i + 1}", corpus.EXTENSIONS[kind], kind, 3000, 2000, 40 + i
        )
        corpus.write_sample(root, sample)
        requests[kind] = RenderRequest(sample.image_id, sample.filename, sample.ext)
    return root, requests


OPTIONS: RenderOptions = options_of(RenderSettings())


@pytest.mark.parametrize("kind", KINDS)
def test_cascade(benchmark, uploads, kind: str) -> None:  # type: ignore[no-untyped-def]
    root, requests = uploads
    result = benchmark(render, root, requests[kind], OPTIONS)
    assert result.ok


@pytest.mark.parametrize("kind", KINDS)
def test_independent(benchmark, uploads, kind: str) -> None:  # type: ignore[no-untyped-def]
    root, requests = uploads
    results = benchmark(renderers.independent, root, requests[kind], OPTIONS)
    assert all(r.ok for r in results)


@pytest.mark.parametrize("kind", KINDS)
def test_pillow(benchmark, uploads, kind: str) -> None:  # type: ignore[no-untyped-def]
    root, requests = uploads
    benchmark(renderers.pillow, root, requests[kind], OPTIONS, root / "pillow")
    assert (root / "pillow" / Folder.THUMBS / f"{requests[kind].filename}.webp").exists()
