"""The renderers fleet is compared with, producing the same outputs as ``imgworker.render``.

- :func:`independent`: the replaced design's three jobs, one full ``thumbnail`` decode per
  variant (still shrink-on-load, to isolate what the cascade saves).
- :func:`pillow`: the replaced design's library, Pillow with LANCZOS, one decode per upload.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from imgworker.render import RenderOptions, RenderRequest, RenderResult, render
from imgworker.render.steps import FORMAT_OF_EXT


def independent(root: Path, request: RenderRequest, options: RenderOptions) -> list[RenderResult]:
    """Each variant rendered on its own from the original: three decodes for a big upload."""
    return [
        render(root, request, dataclasses.replace(options, variants=(variant,)))
        for variant in options.variants
    ]


def pillow(root: Path, request: RenderRequest, options: RenderOptions, out: Path) -> None:
    """The same variants with Pillow (LANCZOS), written under ``out``."""
    from PIL import Image, ImageOps

    with Image.open(root / "fullsize" / f"{request.filename}.{request.ext}") as opened:
        opened.seek(0)
        image = ImageOps.exif_transpose(opened)
        has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        longest = max(image.size)
        for variant in options.variants:
            if not variant.always and longest <= variant.edge:
                continue
            copy = image.copy()
            copy.thumbnail((variant.edge, variant.edge), Image.Resampling.LANCZOS)
            fmt = variant.format or FORMAT_OF_EXT[request.ext.lower()]
            target = out / variant.folder
            target.mkdir(parents=True, exist_ok=True)
            path = target / f"{request.filename}.{'jpg' if fmt == 'jpeg' else fmt}"
            if fmt == "jpeg":
                if copy.mode == "RGBA":
                    white = Image.new("RGB", copy.size, (255, 255, 255))
                    white.paste(copy, mask=copy.getchannel("A"))
                    copy = white
                copy.save(path, "JPEG", quality=variant.quality, optimize=True)
            elif fmt == "webp":
                copy.save(path, "WEBP", quality=variant.quality)
            elif fmt == "png":
                copy.save(path, "PNG", compress_level=6)
            elif fmt == "gif":
                copy.save(path, "GIF")
            else:
                raise ValueError(fmt)
