"""Render a batch of originals on the GPU: pure image code (no queue, no asyncio), the GPU
side of :class:`imgworker.gpu.backend.GpuBackend`.

Per batch: read and route each original on a CPU thread pool, decode the GPU's share in one
batched call, resize each on the GPU (the CPU path's cascade: the largest wanted box first,
then each variant from the one before it), encode the JPEG variants on the GPU in batches,
then on the thread pool encode the rest (WebP thumbnails, from memory, through libvips) and
store every output through the same code as the CPU path. An original the GPU must not or
cannot render comes back as :class:`ToCpu`, before anything of it was written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyvips

from fleet.objects import first_line
from fleet.paths import UnsafePathError
from imgworker.gpu import resize
from imgworker.gpu.codec import Codec
from imgworker.gpu.route import Route, route
from imgworker.render import steps, storage
from imgworker.render.errors import RenderError
from imgworker.render.options import Output, RenderOptions, RenderRequest, RenderResult, Variant
from imgworker.render.pipeline import (
    fail_alone,
    result_of,
    settle_unwanted,
    store_encoded,
    wanted_variants,
)
from imgworker.render.storage import Original, Store, Where


@dataclass(frozen=True, slots=True)
class ToCpu:
    """This original goes to the CPU pool (nothing of it was written): ``reason`` says why."""

    reason: str
    failed: bool = False
    """True when the GPU tried and failed (a fallback), False when routed away before."""


Outcome = RenderResult | ToCpu


@dataclass(slots=True)
class _Job:
    """One original on its way through the GPU."""

    request: RenderRequest
    options: RenderOptions
    store: Store
    original: Original
    data: bytes
    header: Route
    wanted: list[Variant]
    dropped: dict[str, Output]
    size: tuple[int, int]
    """The first resize's output size, as libvips computes it (the CPU path's exact sizes)."""
    started: float
    encoded: dict[str, tuple[bytes, int, int]] = field(default_factory=dict)
    """Variant name -> (encoded bytes, width, height), for the JPEGs encoded on the GPU."""
    pixels: dict[str, Any] = field(default_factory=dict)
    """Variant name -> host pixels (H x W x bands uint8) still to encode on the CPU."""


class GpuRenderer:
    """Renders batches on one codec (one GPU); ``pool`` runs the CPU side (reads, WebP
    encodes, writes) of each batch, so a slow write never holds the GPU."""

    def __init__(self, where: Where, codec: Codec, max_pixels: int, pool: Executor) -> None:
        self.where = where
        self.codec = codec
        self.max_pixels = max_pixels
        """The GPU's pixel cap (GPU_MAX_PIXELS); the render cap (MAX_PIXELS) applies too."""
        self.pool = pool

    def render(self, batch: Sequence[tuple[RenderRequest, RenderOptions]]) -> list[Future[Outcome]]:
        """One future per original, in order. Returns once the GPU is done with the batch;
        the futures complete as the pool encodes and stores each original."""
        prepared = [f.result() for f in [self.pool.submit(self._prepare, r, o) for r, o in batch]]
        jobs = [(i, p) for i, p in enumerate(prepared) if isinstance(p, _Job)]
        outcomes: list[Outcome | _Job] = list(prepared)
        for i, failure in self._on_gpu([job for _, job in jobs]).items():
            outcomes[jobs[i][0]] = failure
        futures: list[Future[Outcome]] = []
        for outcome in outcomes:
            if isinstance(outcome, _Job):
                futures.append(self.pool.submit(self._finish, outcome))
            else:
                done: Future[Outcome] = Future()
                done.set_result(outcome)
                futures.append(done)
        return futures

    # --- on the pool, before the GPU ------------------------------------------------------------

    def _prepare(self, request: RenderRequest, options: RenderOptions) -> Outcome | _Job:
        """Read and route one original; settle what needs no decode (current outputs,
        variants not wanted). Anything unusual goes to the CPU path, which reports it."""
        started = time.perf_counter()
        store = storage.store_for(self.where, request.public)
        try:
            original = store.original(request.filename, request.ext)
            data = original.source.read_bytes() if isinstance(original.source, Path) else original.source
        except (RenderError, UnsafePathError, OSError) as exc:
            return ToCpu(f"original not read here: {exc}")
        header = route(data, min(self.max_pixels, options.max_pixels))
        if not header.gpu:
            return ToCpu(header.reason)
        wanted = wanted_variants(options, header.width, header.height)
        settled = result_of(
            request, started, lambda: settle_unwanted(store, request, wanted, original.modified, options)
        )
        if settled.skipped or not settled.ok or not wanted:
            return settled
        box = max(v.width for v in wanted), max(v.height for v in wanted)
        try:  # header only: libvips builds the resize lazily and decodes nothing here
            sized = pyvips.Image.thumbnail_buffer(data, box[0], height=box[1], size="down")
        except pyvips.Error as exc:
            return ToCpu(f"libvips cannot size it: {steps._vips_message(exc)}")
        return _Job(
            request,
            options,
            store,
            original,
            data,
            header,
            wanted,
            settled.outputs,
            (sized.width, sized.height),
            started,
        )

    # --- on the GPU ----------------------------------------------------------------------------

    def _on_gpu(self, jobs: list[_Job]) -> dict[int, ToCpu]:
        """Decode, resize and JPEG-encode ``jobs`` on the GPU; the ones that failed, by index.
        Each failure is that image's alone: the rest of the batch goes on."""
        failed: dict[int, ToCpu] = {}
        decoded: dict[int, Any] = {}
        for grey in (False, True):
            group = [i for i, job in enumerate(jobs) if (job.header.bands == 1) == grey]
            if not group:
                continue
            try:
                images = self.codec.decode([jobs[i].data for i in group], grey=grey)
            except Exception as exc:  # noqa: BLE001 - a batch the library refuses: each image to the CPU
                failed.update({i: ToCpu(f"GPU decode failed: {first_line(exc)}", failed=True) for i in group})
                continue
            for i, image in zip(group, images, strict=True):
                if image is None:
                    failed[i] = ToCpu("the GPU decoder could not decode it", failed=True)
                else:
                    decoded[i] = image
        resized: dict[int, dict[str, Any]] = {}
        for i, image in decoded.items():
            try:
                resized[i] = self._cascade(jobs[i], image)
            except Exception as exc:  # noqa: BLE001 - out of GPU memory, a kernel error: this image to the CPU
                failed[i] = ToCpu(f"GPU resize failed: {first_line(exc)}", failed=True)
        decoded.clear()  # the full-size decodes are the batch's big allocations
        failed.update(self._encode(jobs, resized))
        return failed

    def _cascade(self, job: _Job, image: Any) -> dict[str, Any]:
        """The CPU path's cascade on the GPU: the decode resized to the largest wanted box,
        then each variant from the one before it (or from that first resize when its box does
        not fit inside the one before); 8-bit pixels between steps, as the CPU path keeps them."""
        xp = self.codec.xp
        height, width = image.shape[:2]
        if abs(width / height - job.size[0] / job.size[1]) > 0.02 * width / height:
            raise ValueError(f"decoded {width}x{height}, libvips sizes it {job.size[0]}x{job.size[1]}")
        first = self._resized(image, *job.size)
        made: dict[str, Any] = {}
        previous: tuple[Variant, Any] | None = None
        for variant in job.wanted:
            base = previous[1] if previous is not None and variant.within(previous[0]) else first
            size = resize.fit(base.shape[1], base.shape[0], variant.width, variant.height)
            made[variant.name] = self._resized(base, *size)
            previous = (variant, made[variant.name])
        for variant in job.wanted:
            if variant.sharpen:
                pixels = made[variant.name].astype(xp.float32)
                made[variant.name] = resize.to_uint8(xp, resize.sharpen(xp, pixels))
        return made

    def _resized(self, image: Any, width: int, height: int) -> Any:
        if image.shape[1] == width and image.shape[0] == height:
            return image
        xp = self.codec.xp
        return resize.to_uint8(xp, resize.resize(xp, image.astype(xp.float32), width, height))

    def _encode(self, jobs: list[_Job], resized: dict[int, dict[str, Any]]) -> dict[int, ToCpu]:
        """JPEG variants encoded on the GPU, batched by quality; the other formats' pixels
        copied to the host for the pool. An image whose encode fails goes to the CPU."""
        failed: dict[int, ToCpu] = {}
        by_quality: dict[int, list[tuple[int, str, Any]]] = {}
        for i, made in resized.items():
            job = jobs[i]
            for variant in job.wanted:
                fmt = variant.output_format(job.request.ext)
                if fmt is None:
                    failed[i] = ToCpu(f"no {variant.name} format for .{job.request.ext}")
                elif fmt == "jpeg":
                    by_quality.setdefault(variant.quality, []).append((i, variant.name, made[variant.name]))
                else:
                    job.pixels[variant.name] = self.codec.to_host(made[variant.name])
        for quality, items in by_quality.items():
            try:
                streams = self.codec.encode_jpeg([image for _, _, image in items], quality)
            except Exception as exc:  # noqa: BLE001 - each image of this encode batch to the CPU
                failed.update(
                    {i: ToCpu(f"GPU JPEG encode failed: {first_line(exc)}", failed=True) for i, _, _ in items}
                )
                continue
            for (i, name, image), data in zip(items, streams, strict=True):
                if data is None:
                    failed[i] = ToCpu(f"the GPU encoder could not encode {name}", failed=True)
                else:
                    jobs[i].encoded[name] = (data, image.shape[1], image.shape[0])
        self.codec.synchronize()
        return failed

    # --- on the pool, after the GPU ------------------------------------------------------------

    def _finish(self, job: _Job) -> Outcome:
        """Encode what the GPU did not (WebP from memory), then store every output as the
        CPU path stores it: the thumbnail side first, a medium or large failing alone."""
        try:
            for name, pixels in job.pixels.items():
                variant = next(v for v in job.wanted if v.name == name)
                job.encoded[name] = (
                    _encode_on_cpu(pixels, variant, job.request.ext),
                    pixels.shape[1],
                    pixels.shape[0],
                )
        except pyvips.Error as exc:
            return ToCpu(f"CPU encode of the GPU's pixels failed: {steps._vips_message(exc)}", failed=True)
        return result_of(job.request, job.started, lambda: self._store(job))

    def _store(self, job: _Job) -> dict[str, Output]:
        outputs = dict(job.dropped)
        for variant in sorted(job.wanted, key=lambda v: not v.always):
            data, width, height = job.encoded[variant.name]
            write = _writer(job, variant, data, width, height)
            outputs[variant.name] = write() if variant.always else fail_alone(variant, write)
        return outputs


def _writer(job: _Job, variant: Variant, data: bytes, width: int, height: int) -> Callable[[], Output]:
    return lambda: store_encoded(job.store, job.request, variant, data, width, height, job.original.size)


def _encode_on_cpu(pixels: Any, variant: Variant, original_ext: str) -> bytes:
    """Host pixels to the variant's format through libvips, as the CPU path encodes it."""
    height, width, bands = pixels.shape
    image = pyvips.Image.new_from_memory(pixels.tobytes(), width, height, bands, "uchar")
    image = image.copy(interpretation="b-w" if bands == 1 else "srgb")
    fmt = variant.output_format(original_ext)
    assert fmt is not None  # checked before the GPU encode
    return steps.encode(image, fmt, variant.quality, variant.effort)
