"""The render pipeline on real files with real pyvips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pyvips

from fleet.board import VariantStatus
from fleet.render_settings import MAX_PIXELS, RenderSettings
from imgworker.render import RenderRequest, RenderResult, options_of, render
from tests import images


def run(
    storage: Path, filename: str, ext: str, image_id: int = 1, max_pixels: int = MAX_PIXELS, **look: Any
) -> RenderResult:
    """Render with the default settings, or with ``look`` (RenderSettings fields) changed."""
    options = options_of(RenderSettings(**look), max_pixels=max_pixels)
    return render(storage, RenderRequest(image_id, filename, ext), options)


def open_out(storage: Path, path: str | None) -> pyvips.Image:
    assert path is not None
    image = pyvips.Image.new_from_file(str(storage / path), fail_on="error")
    image.avg()  # full decode
    return image


def test_big_jpeg_gets_all_three_variants_from_its_stored_name(storage: Path) -> None:
    name = images.jpeg(storage, "2025-12-01-123.jpeg", 3000, 2000)
    result = run(storage, *name)
    assert result.ok, result.error
    large, medium, thumb = (result.outputs[v] for v in ("large", "medium", "thumb"))
    assert (large.path, medium.path, thumb.path) == (
        "large/2025-12-01-123.jpeg",
        "medium/2025-12-01-123.jpeg",
        "thumbs/2025-12-01-123.webp",
    )
    assert (large.width, large.height) == (2048, 1365)
    assert (medium.width, medium.height) == (1280, 853)
    assert (thumb.width, thumb.height) == (500, 333)
    for out in (large, medium, thumb):
        assert out.status is VariantStatus.READY
        decoded = open_out(storage, out.path)
        assert (decoded.width, decoded.height) == (out.width, out.height)
        assert (storage / out.path).stat().st_size == out.bytes
    assert open_out(storage, large.path).get("vips-loader").startswith("jpegload")
    assert open_out(storage, thumb.path).get("vips-loader").startswith("webpload")


def test_mid_size_original_gets_medium_but_not_large(storage: Path) -> None:
    result = run(storage, *images.jpeg(storage, "mid.jpg", 1600, 1200))
    assert result.outputs["large"].status is VariantStatus.NONE
    assert result.outputs["medium"].status is VariantStatus.READY
    assert not (storage / "large" / "mid.jpg").exists()


def test_small_original_gets_thumb_only_and_is_never_upscaled(storage: Path) -> None:
    result = run(storage, *images.jpeg(storage, "small.jpg", 300, 200))
    assert result.ok
    assert result.outputs["medium"].status is VariantStatus.NONE
    assert result.outputs["large"].status is VariantStatus.NONE
    thumb = result.outputs["thumb"]
    assert (thumb.width, thumb.height) == (300, 200)
    assert sorted(p.name for p in (storage / "thumbs").iterdir()) == ["small.webp"]


def test_variant_not_smaller_than_original_is_not_kept(storage: Path) -> None:
    # A q30 original barely over the medium edge: its q90 rendition is bigger than it.
    name = images.write(storage, "flat.jpg", images.pattern(1300, 1300), Q=30)
    result = run(storage, *name)
    assert result.ok
    assert result.outputs["medium"].status is VariantStatus.NONE
    assert not (storage / "medium" / "flat.jpg").exists()
    assert result.outputs["thumb"].status is VariantStatus.READY


def test_alpha_kept_in_webp_thumb_and_flattened_onto_white_for_jpeg_targets(storage: Path) -> None:
    rgba = images.pattern(1400, 1000, bands=3).bandjoin(
        (pyvips.Image.black(1400, 1000) + 0).cast("uchar")  # fully transparent
    )
    png = images.write(storage, "alpha.png", rgba)
    result = run(storage, *png)
    assert result.ok
    thumb = open_out(storage, result.outputs["thumb"].path)
    assert thumb.hasalpha()
    medium = open_out(storage, result.outputs["medium"].path)  # PNG medium keeps alpha too
    assert medium.hasalpha()

    # The same pixels stored as a JPEG-target: a .jpg name holding a PNG body.
    jpg_named = images.write(storage, "alpha-as.png", rgba)
    (storage / "fullsize" / "alpha-as.png").rename(storage / "fullsize" / "alpha-as.jpg")
    result = run(storage, jpg_named[0], "jpg")
    assert result.ok, result.error
    medium = open_out(storage, result.outputs["medium"].path)
    assert medium.bands == 3 and not medium.hasalpha()
    assert medium.avg() > 250  # transparent -> white, not black


def test_png_saved_as_art_tools_save_it_still_gets_smaller_variants(storage: Path) -> None:
    # zlib level 6 with adaptive row filters, as libpng writes by default. An unfiltered
    # variant encode came out bigger than this original, so no variant was kept.
    art = images.pattern(3000, 2000, bands=4)
    result = run(storage, *images.write(storage, "art.png", art, compression=6, filter="all"))
    assert result.ok, result.error
    original = (storage / "fullsize" / "art.png").stat().st_size
    for variant in ("large", "medium"):
        out = result.outputs[variant]
        assert out.status is VariantStatus.READY
        assert out.bytes < original
        assert open_out(storage, out.path).get("vips-loader").startswith("pngload")


def test_opaque_alpha_is_dropped_and_partial_alpha_kept(storage: Path) -> None:
    colour = images.pattern(1400, 1000, bands=3)
    opaque = colour.bandjoin((pyvips.Image.black(1400, 1000) + 255).cast("uchar"))
    result = run(storage, *images.write(storage, "opaque.png", opaque))
    assert result.ok, result.error
    for variant in ("medium", "thumb"):
        out = open_out(storage, result.outputs[variant].path)
        assert out.bands == 3 and not out.hasalpha()
    rgb = run(storage, *images.write(storage, "rgb.png", colour), image_id=2)
    assert result.outputs["thumb"].bytes == rgb.outputs["thumb"].bytes  # the same pixels, the same file

    # One transparent pixel is enough to keep the band.
    one_hole = opaque.draw_rect([0, 0, 0, 0], 700, 500, 1, 1, fill=True)
    result = run(storage, *images.write(storage, "hole.png", one_hole), image_id=3)
    assert open_out(storage, result.outputs["medium"].path).hasalpha()


def test_exif_orientation_is_applied(storage: Path) -> None:
    image = images.pattern(1600, 800).copy()
    image.set_type(pyvips.GValue.gint_type, "orientation", 6)  # rotate 90 on display
    result = run(storage, *images.write(storage, "rotated.jpg", image, Q=90))
    assert result.ok
    medium = result.outputs["medium"]
    assert (medium.width, medium.height) == (640, 1280)
    decoded = open_out(storage, medium.path)
    assert decoded.get_typeof("orientation") == 0  # metadata stripped, pixels already upright


def test_cmyk_jpeg_becomes_srgb(storage: Path) -> None:
    cmyk = images.pattern(800, 600, bands=4).copy(interpretation="cmyk")
    result = run(storage, *images.write(storage, "cmyk.jpg", cmyk, Q=90))
    assert result.ok, result.error
    thumb = open_out(storage, result.outputs["thumb"].path)
    assert thumb.interpretation == "srgb" and thumb.bands == 3


def test_sixteen_bit_png_and_grey_are_rendered_as_8_bit(storage: Path) -> None:
    rgb16 = (images.pattern(700, 500).cast("ushort") * 256).copy(interpretation="rgb16")
    result = run(storage, *images.write(storage, "deep.png", rgb16))
    assert result.ok, result.error
    assert open_out(storage, result.outputs["thumb"].path).format == "uchar"
    grey = images.pattern(700, 500, bands=1)
    result = run(storage, *images.write(storage, "grey.jpg", grey, Q=90))
    assert result.ok, result.error


def test_animated_gif_renders_its_first_frame(storage: Path) -> None:
    frames = [pyvips.Image.black(200, 150, bands=3).linear(1, [v, 0, 0]).cast("uchar") for v in (250, 10, 10)]
    strip = pyvips.Image.arrayjoin(frames, across=1).copy(interpretation="srgb")
    strip.set_type(pyvips.GValue.gint_type, "page-height", 150)
    result = run(storage, *images.write(storage, "anim.gif", strip))
    assert result.ok, result.error
    thumb = open_out(storage, result.outputs["thumb"].path)
    assert (thumb.width, thumb.height) == (200, 150)
    assert thumb[0].avg() > 200  # red first frame, not the dark ones after it


def test_metadata_is_stripped(storage: Path) -> None:
    image = images.pattern(1500, 1000).copy()
    image.set_type(pyvips.GValue.gstr_type, "exif-ifd0-Artist", "someone")
    result = run(storage, *images.write(storage, "meta.jpg", image, Q=90))
    medium = open_out(storage, result.outputs["medium"].path)
    assert medium.get_typeof("exif-data") == 0


def test_settings_change_sizes_and_formats(storage: Path) -> None:
    result = run(
        storage,
        *images.jpeg(storage, "s.jpg", 1000, 1000),
        thumb_width=150,
        thumb_height=150,
        thumb_format="jpeg",
        medium_edge=800,
    )
    assert result.outputs["thumb"].path == "thumbs/s.jpg"
    assert result.outputs["thumb"].width == 150
    assert result.outputs["medium"].width == 800


def test_pixel_cap_refuses_from_the_header(storage: Path) -> None:
    name = images.jpeg(storage, "big.jpg", 2000, 2000)
    result = run(storage, *name, max_pixels=1_000_000)
    assert not result.ok and result.permanent
    assert result.error_type == "TooManyPixelsError"
    assert not (storage / "thumbs").exists() or not any((storage / "thumbs").iterdir())


def test_truncated_jpeg_is_a_permanent_error_not_a_grey_thumbnail(storage: Path) -> None:
    name = images.jpeg(storage, "cut.jpg", 1200, 900)
    path = storage / "fullsize" / "cut.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = run(storage, *name)
    assert not result.ok and result.permanent
    assert result.error_type == "UnsupportedImageError"
    assert not (storage / "thumbs" / "cut.webp").exists()


def test_missing_original_and_non_image(storage: Path) -> None:
    result = run(storage, "nope", "jpg")
    assert (result.ok, result.error_type, result.permanent) == (False, "MissingOriginalError", True)
    (storage / "fullsize" / "text.jpg").write_text("hello")
    result = run(storage, "text", "jpg")
    assert (result.ok, result.error_type) == (False, "UnsupportedImageError")


@pytest.mark.parametrize("filename", ["../escape", "/etc/passwd", "a\x00b", ".hidden", "a/b"])
def test_names_that_leave_the_root_are_refused(storage: Path, filename: str) -> None:
    result = run(storage, filename, "jpg")
    assert (result.ok, result.error_type) == (False, "UnsafePathError")


def test_symlink_out_of_the_root_is_refused(storage: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.jpg"
    images.jpeg(tmp_path, "x.jpg", 100, 100)
    (tmp_path / "fullsize" / "x.jpg").rename(outside)
    (storage / "fullsize" / "link.jpg").symlink_to(outside)
    result = run(storage, "link", "jpg")
    assert (result.ok, result.error_type) == (False, "UnsafePathError")


def test_writes_are_atomic_and_leave_no_temp_files(storage: Path) -> None:
    for i in range(3):
        images.jpeg(storage, f"a{i}.jpg", 2500, 1500)
        assert run(storage, f"a{i}", "jpg").ok
    leftovers = [p for p in storage.rglob(".*") if p.is_file()]
    assert leftovers == []


def test_an_output_folder_linked_outside_the_root_is_refused(storage: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (storage / "thumbs").symlink_to(outside)
    result = run(storage, *images.jpeg(storage, "x.jpg", 640, 480))
    assert (result.ok, result.error_type) == (False, "UnsafePathError")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(("size", "thumb"), [((2000, 1000), (200, 100)), ((1000, 2000), (50, 100))])
def test_thumbnail_fits_the_boards_width_by_height_box(
    storage: Path, size: tuple[int, int], thumb: tuple[int, int]
) -> None:
    name = images.jpeg(storage, "box.jpg", *size)
    result = run(storage, *name, thumb_width=300, thumb_height=100)
    assert result.ok, result.error
    out = result.outputs["thumb"]
    assert (out.width, out.height) == thumb
    decoded = open_out(storage, out.path)
    assert (decoded.width, decoded.height) == thumb
    assert result.outputs["medium"].status is VariantStatus.READY  # medium stays a 1280 square
    assert (result.outputs["medium"].width, result.outputs["medium"].height) == (
        (1280, 640) if size[0] > size[1] else (640, 1280)
    )


def test_a_lone_thumbnail_is_shrunk_on_load_to_the_box(storage: Path) -> None:
    # Both sides of 1200x90 fit 1280 x 1280, so no medium; the thumbnail box 300x100 still shrinks it.
    result = run(storage, *images.jpeg(storage, "strip.jpg", 1200, 90), thumb_width=300, thumb_height=100)
    assert result.outputs["medium"].status is VariantStatus.NONE
    assert (result.outputs["thumb"].width, result.outputs["thumb"].height) == (300, 23)  # 22.5 rounded


def test_a_large_that_cannot_be_written_fails_alone_and_transiently(storage: Path) -> None:
    (storage / "large").write_text("a file where the large folder should be")
    result = run(storage, *images.jpeg(storage, "big.jpg", 3000, 2000), iqdb=True)
    assert not result.ok and not result.permanent
    assert result.failed_variants == ["large"]
    assert result.error_type == "StorageError"
    assert result.error is not None and result.error.startswith("large: StorageError: cannot create")
    large = result.outputs["large"]
    assert (large.status, large.error_type, large.permanent) == (VariantStatus.PENDING, "StorageError", False)
    assert result.outputs["medium"].status is VariantStatus.READY
    thumb = open_out(storage, result.outputs["thumb"].path)
    assert (thumb.width, thumb.height) == (500, 333)
    iqdb = open_out(storage, result.outputs["iqdb"].path)
    assert iqdb.get("vips-loader").startswith("jpegload") and (iqdb.width, iqdb.height) == (500, 333)


def test_variants_in_a_format_we_cannot_write_fail_alone_and_for_good(storage: Path) -> None:
    # Browsers save JPEGs as .jfif: it decodes, but a medium "in the original's format" has no encoder.
    name = images.jpeg(storage, "photo.jpg", 3000, 2000)
    (storage / "fullsize" / "photo.jpg").rename(storage / "fullsize" / "photo.jfif")
    result = run(storage, name[0], "jfif")
    assert not result.ok and result.permanent
    assert result.failed_variants == ["large", "medium"]
    assert result.error is not None and result.error.startswith("large: UnsupportedImageError: cannot write")
    for variant in ("large", "medium"):
        assert result.outputs[variant].status is VariantStatus.NONE
    thumb = open_out(storage, result.outputs["thumb"].path)
    assert (thumb.width, thumb.height) == (500, 333)


def test_a_broken_large_folder_does_not_fail_an_image_that_needs_no_large(storage: Path) -> None:
    (storage / "large").write_text("a file where the large folder should be")
    result = run(storage, *images.jpeg(storage, "small.jpg", 400, 300))
    assert result.ok, result.error
    assert result.outputs["large"].status is VariantStatus.NONE


def _fleet_render(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet", "render", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("planted", ["thumbs/2025-01-01-7.webp", "fullsize/2025-01-01-7.jpg"])
def test_fleet_render_refuses_a_planted_symlink_before_writing(
    storage: Path, tmp_path: Path, planted: str
) -> None:
    """A symlink planted at an output (or at the copy of the original) is refused before any
    write: the file it leads to keeps its bytes and its mtime."""
    upload = tmp_path / "upload" / "2025-01-01-7.jpg"
    upload.parent.mkdir()
    images.pattern(900, 600).write_to_file(str(upload), Q=90)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious, not an image")
    os.utime(outside, (1_000_000_000, 1_000_000_000))
    link = storage / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    done = _fleet_render(str(upload), "--storage", str(storage), "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    [line] = done.stdout.splitlines()
    assert "UnsafePathError" in json.loads(line)["error"] and "symlink" in json.loads(line)["error"]
    assert outside.read_bytes() == b"precious, not an image"
    assert outside.stat().st_mtime == 1_000_000_000
    assert link.is_symlink()


def test_a_progressive_jpeg_of_many_scans_is_refused_from_its_header(storage: Path) -> None:
    from tests.hostile import many_scan_jpeg

    (storage / "fullsize").mkdir(exist_ok=True)
    (storage / "fullsize" / "scans.jpg").write_bytes(many_scan_jpeg(883))
    result = run(storage, "scans", "jpg")
    assert (result.ok, result.permanent, result.error_type) == (False, True, "TooManyScansError")
    assert "100 scans" in (result.error or "")
    assert not (storage / "thumbs").exists()  # refused before any decode


def test_an_ordinary_progressive_jpeg_still_renders(storage: Path) -> None:
    from imgworker.render.steps import count_scans

    name = images.jpeg(storage, "prog.jpg", 1600, 1200, interlace=True)
    assert 5 <= count_scans((storage / "fullsize" / "prog.jpg").read_bytes(), 100) <= 12
    assert run(storage, *name).ok


def test_avif_thumbnail_and_iqdb_jpeg_come_from_the_primary_image_not_the_embedded_one(
    storage: Path,
) -> None:
    """The uploader controls an AVIF's embedded thumbnail item: here a green picture inside a red
    one. Moderation (the thumbnail) and duplicate search (the IQDB JPEG) must see the red one."""
    from tests.hostile import avif_decoy

    (storage / "fullsize").mkdir(exist_ok=True)
    (storage / "fullsize" / "decoy.avif").write_bytes(avif_decoy())
    result = run(storage, "decoy", "avif", iqdb=True)
    assert result.ok, result.error
    for variant in ("thumb", "iqdb"):
        image = open_out(storage, result.outputs[variant].path)
        difference = [abs(image[band].avg() - want) for band, want in enumerate((250, 0, 0))]
        assert max(difference) < 8, (variant, difference)


def test_thumb_effort_trades_webp_bytes_for_time_and_is_part_of_the_fingerprint(storage: Path) -> None:
    import hashlib

    from fleet.settings import Settings, SettingsError
    from imgworker.config import render_options

    filename, ext = images.jpeg(storage, "effort.jpg", 1200, 900)
    sizes = {}
    for effort in (0, 6):
        result = render(
            storage, RenderRequest(1, filename, ext), render_options(Settings(thumb_effort=effort))
        )
        assert result.ok and result.outputs["thumb"].width == 500
        sizes[effort] = result.outputs["thumb"].bytes
    assert sizes[6] < sizes[0]  # more effort, fewer bytes, same pixels' size
    with pytest.raises(SettingsError, match="THUMB_EFFORT='7' is not allowed: must be from 0 to 6"):
        Settings.from_env({"THUMB_EFFORT": "7"})
    # The default keeps the fingerprint it had before the setting existed: no output went stale.
    before = (500, 500, "webp", 75, True, 1280, 2048, 90, False)
    assert Settings().render.fingerprint() == hashlib.sha1(repr(before).encode()).hexdigest()[:12]
    assert Settings(thumb_effort=2).render.fingerprint() != Settings().render.fingerprint()
