"""Render one original into its variants: pure pyvips, an original in and outputs out, through a
:class:`~imgworker.render.storage.Store` (a folder or a bucket).

One decode per original. The largest variant needed is decoded with shrink-on-load, held in
memory, and each smaller variant is resized from the one before it (large -> medium -> thumb)
instead of decoding the original three times.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pyvips

from fleet.board import Folder, VariantStatus
from fleet.paths import UnsafePathError
from imgworker.render import steps, storage
from imgworker.render.errors import RenderError, TooMuchMemoryError, UnsupportedImageError
from imgworker.render.options import Output, RenderOptions, RenderRequest, RenderResult, Variant
from imgworker.render.storage import Listed, Name, Store, Where

COMPARED = frozenset({"iqdb"})
"""Variants whose ``changed`` is found out, not assumed: the light worker re-indexes IQDB only
when its JPEG changed. Nothing reads the others', and in a bucket each costs a HEAD."""


def render(where: Where, request: RenderRequest, options: RenderOptions) -> RenderResult:
    """Render ``request``; failures come back in the result (never raised), with their class.

    A medium or large that cannot be made fails alone: the thumbnail (and the IQDB JPEG) are
    still written, the result is not ``ok``, and its error names the variant."""
    started = time.perf_counter()
    return result_of(
        request, started, lambda: _render(storage.store_for(where, request.public), request, options)
    )


def result_of(request: RenderRequest, started: float, work: Callable[[], dict[str, Output]]) -> RenderResult:
    """The result of ``work`` (a render's outputs), its errors mapped to their class as every
    backend reports them; ``started`` is when the render began (perf_counter)."""
    file = request.file
    try:
        outputs = work()
    except AlreadyCurrent as current:
        seconds = time.perf_counter() - started
        return RenderResult(request.image_id, file, True, current.outputs, skipped=True, seconds=seconds)
    except (RenderError, UnsafePathError) as exc:
        error: Exception = exc
    except pyvips.Error as exc:
        # Pixel data is decoded lazily, so a corrupt body surfaces here, not at inspect().
        error = _decode_error(file, exc)
    except MemoryError:
        error = TooMuchMemoryError(f"{file}: out of memory (over RENDER_MEMORY_MB)")
    else:
        seconds = time.perf_counter() - started
        failed = [out for out in outputs.values() if out.failed]
        if not failed:
            return RenderResult(request.image_id, file, True, outputs, seconds=seconds)
        return RenderResult(
            request.image_id,
            file,
            False,
            outputs,
            error="; ".join(f"{out.variant}: {out.error_type}: {out.error}" for out in failed),
            error_type=failed[0].error_type,
            permanent=all(out.permanent for out in failed),
            seconds=seconds,
        )
    return RenderResult(
        request.image_id,
        file,
        False,
        error=str(error),
        error_type=type(error).__name__,
        permanent=getattr(error, "permanent", True),
        seconds=time.perf_counter() - started,
    )


def _decode_error(file: str, exc: pyvips.Error) -> RenderError:
    """What a libvips error during decode or encode means for this image: an allocation that
    failed under the memory limit, or data it cannot decode. Both are the image's own, for good."""
    if steps.out_of_memory(exc):
        return TooMuchMemoryError(
            f"{file}: out of memory (over RENDER_MEMORY_MB): {steps._vips_message(exc)}"
        )
    return UnsupportedImageError(f"cannot decode {file}: {steps._vips_message(exc)}")


def _render(root: Store, request: RenderRequest, options: RenderOptions) -> dict[str, Output]:
    original = root.original(request.filename, request.ext)  # one read (one GET from a bucket)
    header = steps.inspect(original.source, options.max_pixels, options.decode_budget_mb)
    wanted = wanted_variants(options, header.width, header.height)
    outputs = settle_unwanted(root, request, wanted, original.modified, options)
    if not wanted:  # e.g. a bulk run of medium only, over an original smaller than medium
        return outputs
    resized = _cascade(original.source, header, wanted, options)
    # The thumbnail side first: it is what every page shows, and it depends on nothing else.
    for variant in sorted(wanted, key=lambda v: not v.always):
        image = resized[variant.name]
        if variant.always:  # the thumbnail failing fails the whole render
            outputs[variant.name] = _write_variant(root, request, variant, image, original.size)
        else:
            outputs[variant.name] = _write_or_fail_alone(root, request, variant, image, original.size)
    return outputs


def _cascade(
    source: Path | bytes, header: steps.Header, wanted: list[Variant], options: RenderOptions
) -> dict[str, pyvips.Image]:
    """One decode, shrunk on load to the box of every wanted variant; then each variant resized
    from the one before it (large -> medium -> thumb), or from the decode when its box does not
    fit inside the one before (a wide thumbnail box, say)."""
    width, height = max(v.width for v in wanted), max(v.height for v in wanted)
    image = steps.to_srgb(
        steps.load(source, header.format, width, height, options.fail_on, header.has_profile)
    )
    if len(wanted) > 1 or image.hasalpha():
        # Decode once, into memory: each smaller variant starts from these pixels, and the
        # alpha band is checked without a second decode. A lone opaque variant streams
        # straight into its encoder instead (10-20 % faster at 2048 px).
        image = steps.drop_opaque_alpha(image.copy_memory())
    resized: dict[str, pyvips.Image] = {}
    previous: tuple[Variant, pyvips.Image] | None = None
    for index, variant in enumerate(wanted):
        base = previous[1] if previous is not None and variant.within(previous[0]) else image
        made = steps.resize(base, variant.width, variant.height)
        if 0 < index < len(wanted) - 1:
            made = made.copy_memory()
        resized[variant.name] = made
        previous = (variant, made)
    return resized


def wanted_variants(options: RenderOptions, width: int, height: int) -> list[Variant]:
    """The variants an original of ``width`` x ``height`` gets: the thumbnail side always,
    a medium or large only when the original is larger than its box."""
    return [v for v in options.variants if v.always or not v.fits(width, height)]


def settle_unwanted(
    root: Store, request: RenderRequest, wanted: list[Variant], modified: float, options: RenderOptions
) -> dict[str, Output]:
    """Before any decode: raise :class:`AlreadyCurrent` when the outputs are current (the rule
    of :func:`current`, for one original already read, modified at ``modified``), else drop the
    variants not wanted (their stale files removed, in one request to a bucket) and return those."""
    if options.skip_current_since is not None or options.skip_existing:
        outputs = {
            v.name: root.listed(v.folder, [(request.filename, v.ext(request.ext))]) for v in options.variants
        }
        original = {(request.filename, request.ext): Listed(0, modified)}
        found = _current(request, original, outputs, options)
        if found is not None:
            raise AlreadyCurrent(_on_disk(request, found, options))
    return _drop(root, [v for v in options.variants if v not in wanted], request)


class AlreadyCurrent(Exception):
    def __init__(self, outputs: dict[str, Output]) -> None:
        super().__init__("outputs already current")
        self.outputs = outputs


def current(
    where: Where, requests: Sequence[RenderRequest], options: RenderOptions
) -> list[RenderResult | None]:
    """A bulk run's cheap skip, before anything is read: for each request, a skipped result
    when every output it needs exists (and, unless only existence counts, is newer than both
    its original and the current settings), or None: render it.

    Only names, sizes and times are looked at: one listing per folder of each bucket (a stat
    per file in a folder), however many requests. Without the original's header, a medium or
    large counts as needed when it exists (then it must be current) and as NONE when it does
    not, as a render of current settings leaves them."""
    if options.skip_current_since is None and not options.skip_existing:
        return [None] * len(requests)
    started = time.perf_counter()
    results: list[RenderResult | None] = [None] * len(requests)
    by_store: dict[bool, list[int]] = {}  # the board's two buckets: private ones apart
    for index, request in enumerate(requests):
        by_store.setdefault(isinstance(where, storage.StatusBuckets) and not request.public, []).append(index)
    for indexes in by_store.values():
        chosen = [requests[i] for i in indexes]
        root = storage.store_for(where, chosen[0].public)
        originals = (
            {}
            if options.skip_existing
            else root.listed(Folder.ORIGINALS, [(r.filename, r.ext) for r in chosen])
        )
        outputs = {
            v.name: root.listed(v.folder, [(r.filename, v.ext(r.ext)) for r in chosen])
            for v in options.variants
        }
        for index, request in zip(indexes, chosen, strict=True):
            found = _current(request, originals, outputs, options)
            if found is not None:
                results[index] = RenderResult(
                    request.image_id, request.file, True, _on_disk(request, found, options), skipped=True
                )
    seconds = (time.perf_counter() - started) / len(requests) if requests else 0.0
    for result in results:
        if result is not None:
            result.seconds = seconds
    return results


def _current(
    request: RenderRequest,
    originals: dict[Name, Listed],
    outputs: dict[str, dict[Name, Listed]],
    options: RenderOptions,
) -> dict[str, Listed] | None:
    """The outputs found for ``request`` when they are all current (see :func:`current`), else None."""
    since = 0.0
    if not options.skip_existing:
        original = originals.get((request.filename, request.ext))
        if original is None:  # rendering it says what is wrong
            return None
        since = max(original.modified, options.skip_current_since or 0.0)
    found: dict[str, Listed] = {}
    for variant in options.variants:
        listed = outputs[variant.name].get((request.filename, variant.ext(request.ext)))
        if listed is None:
            if variant.always:
                return None
            continue  # a medium/large that was NONE (not smaller than the original) has no file
        if listed.modified < since or not listed.size:
            return None
        found[variant.name] = listed
    return found


def _on_disk(request: RenderRequest, found: dict[str, Listed], options: RenderOptions) -> dict[str, Output]:
    """A skipped original's outputs as they are stored, unchanged (nothing is encoded): the
    board's flags are still settled from them (a file there is READY, none is NONE), and IQDB
    is only told by the reindex rule, since the thumbnail's bytes did not change."""
    outputs: dict[str, Output] = {}
    for variant in options.variants:
        if variant.name in found:
            relative = f"{variant.folder}/{request.filename}.{variant.ext(request.ext)}"
            outputs[variant.name] = Output(
                variant.name, VariantStatus.READY, relative, bytes=found[variant.name].size, changed=False
            )
        else:
            outputs[variant.name] = Output(variant.name, VariantStatus.NONE)
    return outputs


def _write_variant(
    root: Store, request: RenderRequest, variant: Variant, image: pyvips.Image, original_bytes: int
) -> Output:
    fmt = variant.output_format(request.ext)
    if fmt is None:
        raise UnsupportedImageError(f"cannot write a {variant.name} variant as .{request.ext}")
    if variant.sharpen:
        image = steps.sharpen(image)
    data = steps.encode(steps.flatten(image, fmt), fmt, variant.quality, variant.effort)
    return store_encoded(root, request, variant, data, image.width, image.height, original_bytes)


def store_encoded(
    root: Store,
    request: RenderRequest,
    variant: Variant,
    data: bytes,
    width: int,
    height: int,
    original_bytes: int,
) -> Output:
    """Write one encoded variant (atomically), or drop it when it is not smaller than the
    original: the one place either backend stores an output."""
    if not variant.always and len(data) >= original_bytes:  # no smaller: serve the original
        return _drop(root, [variant], request)[variant.name]
    ext = variant.ext(request.ext)
    changed = root.put(variant.folder, request.filename, ext, data, compare=variant.name in COMPARED)
    return Output(
        variant.name,
        VariantStatus.READY,
        f"{variant.folder}/{request.filename}.{ext}",
        width,
        height,
        len(data),
        changed,
    )


def _write_or_fail_alone(
    root: Store, request: RenderRequest, variant: Variant, image: pyvips.Image, original_bytes: int
) -> Output:
    return fail_alone(variant, lambda: _write_variant(root, request, variant, image, original_bytes))


def fail_alone(variant: Variant, write: Callable[[], Output]) -> Output:
    """A medium or large whose encode or write fails is reported, not raised: the board treats
    it as independent of the thumbnail, which must still be made."""
    try:
        return write()
    except (RenderError, UnsafePathError) as exc:
        error: Exception = exc
    except pyvips.Error as exc:  # an encoder that refuses these pixels
        error = UnsupportedImageError(f"cannot encode {variant.name}: {steps._vips_message(exc)}")
    permanent = bool(getattr(error, "permanent", True))
    return Output(
        variant.name,
        VariantStatus.NONE if permanent else VariantStatus.PENDING,
        error=str(error),
        error_type=type(error).__name__,
        permanent=permanent,
    )


def _drop(root: Store, variants: list[Variant], request: RenderRequest) -> dict[str, Output]:
    """Variants NONE: also remove stale files a previous render (other settings) may have left,
    all in one call (one request to a bucket). No folder is made for that, so a broken
    ``large/`` cannot fail the thumbnail of a small image."""
    root.remove(request.filename, [(v.folder, request.ext) for v in variants if v.format is None])
    return {v.name: Output(v.name, VariantStatus.NONE) for v in variants}
