"""The GPU backend's own code, run in its libraries' CPU mode (GPU_DEVICE=cpu: nvImageCodec's
CPU backends, numpy for the resize), against the pyvips path on real files: every output the
same size and within 35 dB PSNR. Routing, per-image fallback, and the worker's start-up probe
(a real `fleet worker img` process)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import pyvips

from bench.gpu import MIN_PSNR_DB, psnr
from fleet.client import FleetClient
from fleet.processes import wait_healthy
from fleet.registry import Queue
from fleet.render_settings import RenderSettings
from fleet.settings import Settings
from imgworker.backend import ProcessPoolBackend, configure_vips
from imgworker.render import RenderOptions, RenderRequest, RenderResult, options_of, render
from tests import images

if importlib.util.find_spec("nvidia.nvimgcodec") is None:  # imported by the code under test, quietly
    pytest.skip("the fleet[gpu] extra is not installed", allow_module_level=True)

from imgworker.gpu.backend import GpuBackend
from imgworker.gpu.codec import Codec, parse_device, probe
from imgworker.gpu.pipeline import GpuRenderer, ToCpu
from imgworker.gpu.route import route

OPTIONS = options_of(RenderSettings(iqdb=True))  # thumb (WebP, sharpened), large, medium, IQDB JPEG


DEVICE = os.environ.get("FLEET_TEST_GPU_DEVICE", "cpu")
"""Where the GPU code runs: its libraries' CPU mode here and in CI; bench/gpu.sh sets a CUDA
device index on a GPU machine, so the same assertions hold on the GPU."""


@pytest.fixture(scope="module")
def codec() -> Codec:
    configure_vips()
    return probe(parse_device(DEVICE))


@pytest.fixture
def threads() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def rotated(width: int, height: int) -> Any:
    image = images.pattern(width, height, seed=3).copy()
    image.set_type(pyvips.GValue.gint_type, "orientation", 6)  # shown rotated 90 degrees
    return image


def junk_before_a_marker(storage: Path, name: str) -> tuple[str, str]:
    """A baseline JPEG with stray bytes before its quantisation tables: libjpeg skips them
    with a warning (libvips renders it), nvImageCodec's parser refuses the file."""
    filename, ext = images.jpeg(storage, name, 1500, 1000)
    path = storage / "fullsize" / name
    data = path.read_bytes()
    at = data.index(b"\xff\xdb")
    path.write_bytes(data[:at] + b"\x00junk" + data[at:])
    return filename, ext


def corpus(storage: Path) -> list[RenderRequest]:
    """Baseline JPEGs of every shape the GPU takes: big (all variants), mid, tiny, wide, tall,
    grey, EXIF-rotated, a low quality one (4:2:0 chroma), a JPEG stored as .jpeg."""
    made = [
        images.jpeg(storage, "big.jpg", 2600, 1700),
        images.jpeg(storage, "mid.jpg", 1500, 1100),
        images.jpeg(storage, "tiny.jpg", 40, 30),
        images.jpeg(storage, "wide.jpg", 3000, 420),
        images.jpeg(storage, "tall.jpg", 500, 2300),
        images.write(storage, "grey.jpg", images.pattern(1700, 1300, bands=1), Q=90),
        images.write(storage, "rotated.jpg", rotated(1800, 1200), Q=90),
        images.jpeg(storage, "low.jpeg", 1400, 900, Q=60),
    ]
    return [RenderRequest(i, filename, ext) for i, (filename, ext) in enumerate(made, 1)]


def pixels(path: Path) -> Any:
    return pyvips.Image.new_from_file(str(path)).numpy()


def compare(gpu_root: Path, cpu_root: Path, gpu: RenderResult, cpu: RenderResult) -> dict[str, float]:
    """PSNR of each output the GPU path wrote against the pyvips path's, after asserting both
    made the same outputs, of the same sizes."""
    assert gpu.ok and cpu.ok, (gpu.error, cpu.error)
    assert {n: o.status for n, o in gpu.outputs.items()} == {n: o.status for n, o in cpu.outputs.items()}
    measured = {}
    for name, out in gpu.outputs.items():
        theirs = cpu.outputs[name]
        assert (out.path, out.width, out.height) == (theirs.path, theirs.width, theirs.height), name
        if out.path is None:
            continue
        ours_px, theirs_px = pixels(gpu_root / out.path), pixels(cpu_root / theirs.path)
        assert ours_px.shape == theirs_px.shape, name
        measured[name] = psnr(ours_px, theirs_px)
    return measured


def copy_originals(source: Path, target: Path) -> None:
    (target / "fullsize").mkdir(parents=True, exist_ok=True)
    for path in (source / "fullsize").iterdir():
        (target / "fullsize" / path.name).write_bytes(path.read_bytes())


# --- routing ------------------------------------------------------------------------------------


def test_route_sends_baseline_jpegs_to_the_gpu_and_the_rest_to_the_cpu(storage: Path) -> None:
    from PIL import Image

    made = {
        "baseline": images.jpeg(storage, "b.jpg", 900, 600),
        "grey": images.write(storage, "g.jpg", images.pattern(900, 600, bands=1), Q=90),
        "rotated": images.write(storage, "r.jpg", rotated(900, 600), Q=90),
        "stray bytes": junk_before_a_marker(storage, "j.jpg"),
        "progressive": images.jpeg(storage, "p.jpg", 900, 600, interlace=True),
        "icc": images.write(storage, "i.jpg", images.pattern(900, 600), Q=90, profile="srgb"),
        "png": images.write(storage, "a.png", images.pattern(900, 600)),
        "png alpha": images.write(storage, "t.png", images.pattern(900, 600, bands=4)),
        "gif": images.write(storage, "f.gif", images.pattern(300, 200)),
        "webp": images.write(storage, "w.webp", images.pattern(900, 600)),
        "avif": images.write(storage, "v.avif", images.pattern(300, 200)),
    }
    Image.new("CMYK", (300, 200), (10, 20, 30, 40)).save(storage / "fullsize" / "c.jpg", quality=90)
    made["cmyk"] = ("c", "jpg")
    routes = {
        kind: route((storage / "fullsize" / f"{name}.{ext}").read_bytes(), 40_000_000)
        for kind, (name, ext) in made.items()
    }
    assert {kind for kind, r in routes.items() if r.gpu} == {"baseline", "grey", "rotated", "stray bytes"}
    assert (routes["grey"].bands, routes["baseline"].bands) == (1, 3)
    assert "progressive" in routes["progressive"].reason
    assert "ICC" in routes["icc"].reason
    assert "CMYK" in routes["cmyk"].reason
    for kind in ("png", "png alpha", "gif", "webp", "avif"):
        assert routes[kind].reason == "not a JPEG", kind
    huge = route((storage / "fullsize" / "b.jpg").read_bytes(), 900 * 600 - 1)
    assert not huge.gpu and "pixel cap" in huge.reason


# --- the GPU path against the pyvips path ---------------------------------------------------------


def test_gpu_path_matches_the_pyvips_path(codec: Codec, threads: ThreadPoolExecutor, tmp_path: Path) -> None:
    gpu_root, cpu_root = tmp_path / "gpu", tmp_path / "cpu"
    requests = corpus(gpu_root)
    copy_originals(gpu_root, cpu_root)
    renderer = GpuRenderer(gpu_root, codec, 40_000_000, threads)
    outcomes = [f.result() for f in renderer.render([(r, OPTIONS) for r in requests])]
    assert not [o for o in outcomes if isinstance(o, ToCpu)]
    worst = {}
    for request, outcome in zip(requests, outcomes, strict=True):
        assert isinstance(outcome, RenderResult)
        measured = compare(gpu_root, cpu_root, outcome, render(cpu_root, request, OPTIONS))
        assert measured, request
        worst[request.filename] = min(measured.values())
    print("lowest PSNR per original (dB):", {k: round(v, 1) for k, v in worst.items()})
    assert min(worst.values()) >= MIN_PSNR_DB, worst
    big = outcomes[0]
    assert isinstance(big, RenderResult)
    assert {n: (o.width, o.height) for n, o in big.outputs.items()} == {
        "large": (2048, 1339), "medium": (1280, 837), "thumb": (500, 327), "iqdb": (500, 327)
    }  # fmt: skip
    rotated_thumb = outcomes[6]
    assert isinstance(rotated_thumb, RenderResult) and rotated_thumb.outputs["thumb"].height == 500
    grey = pyvips.Image.new_from_file(str(gpu_root / "medium" / "grey.jpg"))
    assert grey.bands == 1


def test_current_outputs_are_skipped_without_a_decode(
    codec: Codec, threads: ThreadPoolExecutor, storage: Path
) -> None:
    request = RenderRequest(1, *images.jpeg(storage, "again.jpg", 1500, 1000))
    renderer = GpuRenderer(storage, codec, 40_000_000, threads)
    [first] = [f.result() for f in renderer.render([(request, OPTIONS)])]
    options = RenderOptions(OPTIONS.variants, skip_current_since=0.0)
    [again] = [f.result() for f in renderer.render([(request, options)])]
    assert isinstance(first, RenderResult) and isinstance(again, RenderResult)
    assert first.ok and not first.skipped
    assert again.ok and again.skipped and again.outputs["thumb"].changed is False


# --- the backend: routing and fallback in one batch ---------------------------------------------


async def test_backend_routes_by_header_and_falls_back_per_image(
    codec: Codec, threads: ThreadPoolExecutor, tmp_path: Path
) -> None:
    gpu_root, cpu_root = tmp_path / "gpu", tmp_path / "cpu"
    made = [
        images.jpeg(gpu_root, "first.jpg", 1600, 1000),
        junk_before_a_marker(gpu_root, "stray.jpg"),  # the GPU's decoder refuses it
        images.jpeg(gpu_root, "progressive.jpg", 1600, 1000, interlace=True),
        images.write(gpu_root, "alpha.png", images.pattern(900, 700, bands=4)),
        images.write(gpu_root, "grey.jpg", images.pattern(1300, 900, bands=1), Q=90),
    ]
    copy_originals(gpu_root, cpu_root)
    requests = [RenderRequest(i, filename, ext) for i, (filename, ext) in enumerate(made, 1)]
    pool = ProcessPoolBackend(gpu_root, OPTIONS, 2)
    backend = GpuBackend(GpuRenderer(gpu_root, codec, 40_000_000, threads), pool, batch_size=8)
    try:
        results = await backend.render_batch(requests)
    finally:
        await backend.close()
    assert all(r.ok for r in results), [r.error for r in results]
    assert backend.counts == {"gpu": 2, "cpu": 2, "fallback": 1}
    for request, result in zip(requests, results, strict=True):
        expected = render(cpu_root, request, OPTIONS)
        same_bytes = all(
            (gpu_root / o.path).read_bytes() == (cpu_root / o.path).read_bytes()
            for o in result.outputs.values()
            if o.path
        )
        # The pool's renders are the pyvips path's, byte for byte; the GPU's differ, within PSNR.
        assert same_bytes == (request.filename not in ("first", "grey")), request.filename
        assert min(compare(gpu_root, cpu_root, result, expected).values()) >= MIN_PSNR_DB


async def test_batcher_starts_a_partial_batch_after_its_wait(
    codec: Codec, threads: ThreadPoolExecutor, storage: Path
) -> None:
    request = RenderRequest(1, *images.jpeg(storage, "alone.jpg", 600, 400))
    pool = ProcessPoolBackend(storage, OPTIONS, 1)
    backend = GpuBackend(
        GpuRenderer(storage, codec, 40_000_000, threads), pool, batch_size=64, batch_wait_s=0.05
    )
    try:
        [result] = await asyncio.wait_for(backend.render_batch([request]), 60)
    finally:
        await backend.close()
    assert result.ok and backend.counts == {"gpu": 1}


# --- the worker: start-up probe ------------------------------------------------------------------


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, **settings.as_env(), **extra}


NO_SUCH_GPU = "63"
"""A CUDA device index no machine has: "no usable GPU" here and on a GPU machine alike."""


def test_worker_asked_for_a_gpu_it_cannot_have_refuses_in_one_line(settings: Settings) -> None:
    env = _env(settings, GPU_DEVICE=NO_SUCH_GPU, LOG_LEVEL="WARNING")
    done = subprocess.run(
        [sys.executable, "-m", "fleet", "worker", "img", "--backend", "gpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("fleet: setting RENDER_BACKEND=gpu cannot start: ")
    assert "GPU_FALLBACK=cpu" in lines[0]


async def test_worker_with_gpu_fallback_starts_on_the_cpu_pool(
    settings: Settings, client: FleetClient
) -> None:
    env = _env(settings, RENDER_BACKEND="gpu", GPU_DEVICE=NO_SUCH_GPU, GPU_FALLBACK="cpu")
    filename, ext = images.jpeg(settings.storage_path, "fallback.jpg", 1400, 900)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet", "worker", "img"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        await wait_healthy(client, Queue.IMG, timeout_s=90)
        job = await client.render_upload(1, filename, ext)
        result = await job.result(timeout=60, poll_delay=0.05)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert result["ok"] is True
    assert "no usable GPU: rendering on the CPU pool" in stderr
    assert proc.returncode == 0


async def test_worker_renders_uploads_through_the_gpu_backend(settings: Settings) -> None:
    from imgworker.worker import worker_settings
    from tests.conftest import running_worker

    settings = settings.replace(render_backend="gpu", gpu_device=DEVICE, gpu_batch_wait_ms=5.0)
    filename, ext = images.jpeg(settings.storage_path, "through.jpg", 2600, 1800)
    async with (
        await FleetClient.connect(settings) as client,
        running_worker(worker_settings(settings)) as (
            uploads,
            _,
        ),
    ):
        job = await client.render_upload(5, filename, ext)
        result = await job.result(timeout=60, poll_delay=0.05)
        backend = uploads.ctx["backend"]
        assert isinstance(backend, GpuBackend)
        counts = dict(backend.counts)
    assert result["ok"] is True
    assert {v: result["outputs"][v]["status"] for v in ("thumb", "medium", "large")} == dict.fromkeys(
        ("thumb", "medium", "large"), 1
    )
    assert counts == {"gpu": 1}
