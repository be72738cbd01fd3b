"""nvImageCodec on one GPU, or in its CPU mode, with the array module that goes with it:
CuPy on a GPU, numpy in CPU mode. Imported only by a worker that asked for the GPU backend:
nothing here is imported at module level.

Loading nvImageCodec prints "Failed to load nvjpeg2k/nvtiff library" lines: those are codecs
(JPEG 2000, TIFF) fleet never asks it for, so their wheels are not installed. The lines are
kept off stderr while it is imported and the decoder and encoder made (once, at start-up), and its own
per-image logging is off (PYNVIMGCODEC_VERBOSITY=0): a failed image is reported by fleet.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from fleet.objects import first_line

CPU_MODE = "cpu"
"""GPU_DEVICE=cpu: the same code on nvImageCodec's CPU backends and numpy (tests only)."""


class GpuUnavailableError(Exception):
    """No usable GPU for the GPU backend; the message is the one line a refusing worker prints."""


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null: the library writes with C stdio, past Python's sys.stderr."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _nvimgcodec() -> Any:
    os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "0")
    try:
        with _quiet_stderr():  # loading its extensions prints the missing JPEG 2000/TIFF libraries
            from nvidia import nvimgcodec
    except ImportError as exc:
        raise GpuUnavailableError(
            f"nvImageCodec is not installed (install fleet with the gpu extra): {exc}"
        ) from None
    return nvimgcodec


class Codec:
    """A decoder, an encoder and an array module on one device (``None``: CPU mode)."""

    def __init__(self, device: int | None) -> None:
        nv = _nvimgcodec()
        self.nv = nv
        self.device = device
        if device is None:
            import numpy

            self.xp: Any = numpy
            where: dict[str, Any] = {
                "device_id": nv.NVIMGCODEC_DEVICE_CPU_ONLY,
                "backends": [nv.Backend(nv.BackendKind.CPU_ONLY)],
            }
        else:
            try:
                import cupy
            except ImportError as exc:
                raise GpuUnavailableError(f"CuPy (cupy-cuda13x) is not installed: {exc}") from None
            try:
                count = cupy.cuda.runtime.getDeviceCount()
            except Exception as exc:  # noqa: BLE001 - CUDARuntimeError and friends: no driver, no device
                raise GpuUnavailableError(f"no CUDA device: {first_line(exc)}") from None
            if device >= count:
                raise GpuUnavailableError(f"no CUDA device {device} (this machine has {count})")
            cupy.cuda.Device(device).use()
            self.xp = cupy
            where = {"device_id": device}
        try:
            with _quiet_stderr():
                self.decoder = nv.Decoder(**where)
                self.encoder = nv.Encoder(**where)
        except Exception as exc:  # noqa: BLE001 - the library raises RuntimeError subclasses of its own
            message = f"nvImageCodec cannot start on {self.where}: {first_line(exc)}"
            raise GpuUnavailableError(message) from None

    def bind(self) -> None:
        """Make this codec's device current in the calling thread (CuPy's is per thread)."""
        if self.device is not None:
            self.xp.cuda.Device(self.device).use()

    @property
    def where(self) -> str:
        return "the CPU (GPU_DEVICE=cpu, test mode)" if self.device is None else f"CUDA device {self.device}"

    def decode(self, originals: Sequence[bytes], grey: bool) -> list[Any]:
        """Decode a batch (EXIF orientation applied), each to an H x W x bands uint8 array on
        the device, or None where that image failed."""
        nv = self.nv
        params = nv.DecodeParams(color_spec=nv.ColorSpec.GRAY if grey else nv.ColorSpec.SRGB)
        images = self.decoder.decode(list(originals), params=params)
        out: list[Any] = []
        for image in images:
            if image is None:
                out.append(None)
            elif self.device is None:
                out.append(self.xp.asarray(image.cpu()))
            else:
                out.append(self.xp.asarray(image))
        return out

    def encode_jpeg(self, images: Sequence[Any], quality: int) -> list[bytes | None]:
        """A batch of uint8 arrays to baseline JPEG at ``quality``, chroma subsampled as
        libvips does it (4:2:0 below quality 90, none from 90 on); None where one failed."""
        if not images:
            return []
        nv = self.nv
        subsampling = nv.ChromaSubsampling.CSS_444 if quality >= 90 else nv.ChromaSubsampling.CSS_420
        by_bands: dict[int, list[int]] = {}
        for i, image in enumerate(images):
            by_bands.setdefault(image.shape[2], []).append(i)
        out: list[bytes | None] = [None] * len(images)
        for bands, indices in by_bands.items():
            params = nv.EncodeParams(
                quality_type=nv.QualityType.QUALITY,
                quality_value=quality,
                chroma_subsampling=nv.ChromaSubsampling.CSS_GRAY if bands == 1 else subsampling,
            )
            streams = self.encoder.encode([images[i] for i in indices], "jpeg", params=params)
            for i, stream in zip(indices, streams, strict=True):
                out[i] = None if stream is None else bytes(stream)
        return out

    def to_host(self, image: Any) -> Any:
        """A device array as a numpy array (itself in CPU mode)."""
        return image if self.device is None else self.xp.asnumpy(image)

    def synchronize(self) -> None:
        if self.device is not None:
            self.xp.cuda.get_current_stream().synchronize()


def parse_device(value: str) -> int | None:
    """GPU_DEVICE as a device index, or None for the test mode."""
    return None if value == CPU_MODE else int(value)


def probe(device: int | None) -> Codec:
    """A working codec on ``device``: made, and one small JPEG decoded and encoded through
    it, so a broken driver shows at start-up rather than in the first batch. Raises
    :class:`GpuUnavailableError` with the one line to print."""
    import numpy
    import pyvips

    codec = Codec(device)
    sample = pyvips.Image.black(16, 16).jpegsave_buffer()
    try:
        (decoded,) = codec.decode([bytes(sample)], grey=True)
        if decoded is None:
            raise GpuUnavailableError(f"nvImageCodec on {codec.where} could not decode a test JPEG")
        (encoded,) = codec.encode_jpeg([codec.xp.asarray(numpy.zeros((16, 16, 3), numpy.uint8))], 90)
    except GpuUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the driver or library raises on first use
        message = f"nvImageCodec on {codec.where} failed a test JPEG: {first_line(exc)}"
        raise GpuUnavailableError(message) from None
    if not encoded:
        raise GpuUnavailableError(f"nvImageCodec on {codec.where} could not encode a test JPEG")
    return codec
