"""Bench results as JSON, a Markdown table and a PNG chart (drawn with pyvips)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.floors import FLOORS, TARGETS


def headline(results: dict[str, Any]) -> dict[str, float]:
    """The numbers floors and targets are about, flattened."""
    img, upload, lim, lat = results["img"], results["per_upload"], results["limit"], results["latency"]
    idle = lat["latency_ms"]["idle"]["queue_to_start"]
    start = {"fleet_health_start_s": results["cli"]["health_s_median"]} if "cli" in results else {}
    s3 = results.get("s3", {})
    bucket = {"s3_ratio": s3["s3_ratio"]} if "s3_ratio" in s3 else {}
    return (
        start
        | bucket
        | {
            "efficiency": img["efficiency"],
            "cascade_speedup": upload["cascade_speedup"],
            "pillow_speedup": upload["pillow_speedup"],
            "fraction_of_limit": lim["fraction_of_limit"],
            "idle_queue_to_start_p50_ms": idle["p50"],
            "idle_queue_to_start_p99_ms": idle["p99"],
            "bulk_feeder_images_per_s": lat["enqueue"]["bulk_feeder_images_per_s"],
            "thumbnail_p95_ratio": lat["latency_ms"]["thumbnail_p95_ratio"],
        }
    )


def below_floors(results: dict[str, Any]) -> list[str]:
    values = headline(results)
    missing = [f"{k} not measured (floor {floor})" for k, floor in FLOORS.items() if k not in values]
    return missing + [
        f"{k} = {values[k]} < floor {floor}" for k, floor in FLOORS.items() if values.get(k, floor) < floor
    ]


def markdown(results: dict[str, Any]) -> str:
    values = headline(results)
    img, upload, lim, lat = results["img"], results["per_upload"], results["limit"], results["latency"]
    lines = [
        f"Mode: {results['mode']}, {img['processes']} render processes, {results['machine']}.",
        "",
        "| measure | value | floor (quick) | target (full) |",
        "|---|---|---|---|",
    ]
    for key, value in values.items():
        floor = FLOORS.get(key, "")
        met = ""
        if key in TARGETS:
            op, target = TARGETS[key]
            ok = value >= target if op == ">=" else value <= target
            met = f"{op} {target} {'met' if ok else 'missed'}"
        lines.append(f"| {key} | {value} | {floor} | {met} |")
    lines += [
        "",
        "| queue / path | throughput |",
        "|---|---|",
        f"| img, direct pool | {img['direct_renders_per_s']} renders/s |",
        f"| img, fleet end to end | {img['fleet_renders_per_s']} renders/s |",
        *_s3(results.get("s3")),
        f"| img-bulk during the latency run | {lat['latency_ms']['bulk_images_per_s_meanwhile']} images/s |",
        f"| per upload, CPU: cascade / independent / Pillow | {upload['cascade_ms']} / "
        f"{upload['independent_ms']} / {upload['pillow_ms']} ms |",
        f"| thumbnails per core / entropy decodes per core | {lim['thumbs_per_s_per_core']} / "
        f"{lim['decode_per_s_per_core']} per s |",
        f"| enqueue, single | {lat['enqueue']['single_jobs_per_s']} jobs/s |",
        f"| enqueue, bulk feeder | {lat['enqueue']['bulk_feeder_images_per_s']} images/s |",
    ]
    if "memory" in results:
        lines.append(f"| render process, peak RSS | {results['memory']['peak_rss_mb']} MB |")
    for row in results.get("light", []):
        where = f" on {row['database']}" if "database" in row else ""
        lines.append(f"| {row['queue']}: {row['job']}{where} | {row['jobs_per_s']} jobs/s |")
    idle, busy = lat["latency_ms"]["idle"], lat["latency_ms"]["during_bulk"]
    lines += [
        "",
        "| upload latency (ms) | p50 | p95 | p99 |",
        "|---|---|---|---|",
    ]
    for label, data in (("idle", idle), ("during bulk", busy)):
        for kind in ("queue_to_start", "queue_to_thumbnail"):
            d = data[kind]
            lines.append(f"| {label}, {kind.replace('_', ' ')} | {d['p50']} | {d['p95']} | {d['p99']} |")
    tables = _per_kind(upload) + _thumb_profile(lim) + _memory(results.get("memory"))
    tables += _effort(results.get("thumb_effort"))
    return "\n".join(lines + tables + _wakeup(results.get("wakeup"))) + "\n"


def _s3(s3: dict[str, Any] | None) -> list[str]:
    """Renders/s on a local folder and in a bucket (moto on loopback), same corpus and pool."""
    if not s3 or "skipped" in s3:
        return [f"| img, S3 storage | skipped: {s3['skipped']} |"] if s3 else []
    return [
        f"| img, local folder (pool, same run as S3) | {s3['local_renders_per_s']} renders/s |",
        f"| img, S3 bucket (moto on loopback) | {s3['s3_renders_per_s']} renders/s, "
        f"{s3['s3_ratio']} of local |",
        *(
            [
                f"| S3: requests per render / moto CPU per request / moto's share of the pool's CPU | "
                f"{s3['requests_per_render']} / {s3['moto_cpu_ms_per_request']} ms / {s3['moto_cpu_share']} |"
            ]
            if "requests_per_render" in s3
            else []
        ),
    ]


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table, after a blank line."""
    lines = ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def _wakeup(rows: list[dict[str, Any]] | None) -> list[str]:
    """One img replica (two queues), idle and woken: polling every POLL_DELAY_S against waiting
    for a wake token (WAKE_ON_ENQUEUE)."""
    if not rows:
        return []
    header = ["img replica (no-op jobs)", "idle commands/s", "without heartbeat"]
    header.append("enqueue→start p50 / p99 ms")
    return _table(
        header,
        (
            (r["mode"], r["idle_commands_per_s"], r["idle_commands_per_s_without_heartbeat"],
             f"{r['enqueue_to_start_ms_p50']} / {r['enqueue_to_start_ms_p99']}")
            for r in rows
        ),
    )  # fmt: skip


def _effort(table: dict[str, Any] | None) -> list[str]:
    """The thumbnail's WebP encode by THUMB_EFFORT: bytes against CPU time."""
    if not table:
        return []
    title = (
        f"WebP thumbnail encode by THUMB_EFFORT ({table['thumbnails']} thumbnails of the corpus, "
        f"500 px, Q{table['quality']}, one thread):"
    )
    header = ["effort", "CPU ms per thumbnail", "bytes", "bytes vs 4", "time vs 4"]
    keys = ["effort", "ms_per_thumb", "bytes", "bytes_vs_4", "time_vs_4"]
    return ["", title, *_table(header, ([r[k] for k in keys] for r in table["rows"]))]


def _memory(memory: dict[str, Any] | None) -> list[str]:
    """Peak RSS and address space of a render process per kind of big upload (MB)."""
    if not memory:
        return []
    lines = [
        "",
        f"Peak RSS of a render process per kind (MB; under RENDER_MEMORY_MB={memory['memory_limit_mb']}): "
        f"RSS {memory['peak_rss_mb']}, address space {memory['peak_address_space_mb']}.",
    ]
    return lines + _table(list(memory["rss_mb_by_kind"]), [list(memory["rss_mb_by_kind"].values())])


def _per_kind(upload: dict[str, Any]) -> list[str]:
    """Per upload and kind of original, in CPU time: where the cascade and libvips win, and where
    encoding (the same work for every renderer) leaves nothing to win."""
    simd = "pillow_simd_ms" in upload
    head = "| kind | weight | cascade | independent | Pillow |" + (" Pillow-SIMD |" if simd else "")
    head += " cascade speed-up | Pillow speed-up |" + (" Pillow-SIMD speed-up |" if simd else "")
    rows = [{"weight": "mix", **upload}] + [
        {"kind": kind, "weight": upload["weights"][kind], **row} for kind, row in upload["by_kind"].items()
    ]
    lines = ["", "Per upload (CPU ms, all variants; the mix weights each kind):", "", head]
    lines.append("|" + "---|" * head.count(" |"))
    for row in rows:
        cells = [row.get("kind", "board mix"), row["weight"], row["cascade_ms"], row["independent_ms"]]
        cells += [row["pillow_ms"]] + ([row["pillow_simd_ms"]] if simd else [])
        cells += [row["cascade_speedup"], row["pillow_speedup"]] + (
            [row["pillow_simd_speedup"]] if simd else []
        )
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if simd:
        lines.append(f"\nPillow-SIMD {upload['pillow_simd_version']}, in its own interpreter.")
    return lines


def _thumb_profile(lim: dict[str, Any]) -> list[str]:
    profile = lim["thumb_profile_ms"]
    return [
        "",
        f"Where a JPEG thumbnail's {lim['thumb_ms']} CPU ms go (each step timed on its own), "
        f"against {lim['limit_decode_ms']} ms for a reduce-on-load decode of the same files:",
        "",
        "| " + " | ".join(profile) + " |",
        "|" + "---|" * len(profile),
        "| " + " | ".join(str(v) for v in profile.values()) + " |",
    ]


def chart(results: dict[str, Any], path: Path) -> None:
    """Throughput per queue and renders per core, as horizontal bars."""
    import pyvips

    img, lim, lat = results["img"], results["limit"], results["latency"]
    bars = [
        ("img direct (renders/s)", img["direct_renders_per_s"]),
        ("img fleet (renders/s)", img["fleet_renders_per_s"]),
        ("img fleet per core (renders/s)", round(img["fleet_renders_per_s"] / img["processes"], 2)),
        ("img-bulk, uploads meanwhile (images/s)", lat["latency_ms"]["bulk_images_per_s_meanwhile"]),
        ("thumbs per core (/s)", lim["thumbs_per_s_per_core"]),
        ("decodes per core (/s)", lim["decode_per_s_per_core"]),
    ] + [
        (f"{r['queue']} {r.get('database', '')} (jobs/s)".replace("  ", " "), r["jobs_per_s"])
        for r in results.get("light", [])
    ]
    top = max(v for _, v in bars) or 1.0
    width, row, label_w, bar_w = 900, 34, 260, 560
    canvas = pyvips.Image.black(width, row * len(bars) + 20, bands=3) + 255
    for i, (label, value) in enumerate(bars):
        y = 10 + i * row
        length = max(1, int(bar_w * value / top))
        canvas = canvas.draw_rect([70, 110, 180], label_w, y + 4, length, row - 10, fill=True)
        for text, x in ((label, 8), (f"{value:g}", label_w + length + 8)):
            glyphs = pyvips.Image.text(text, dpi=90)
            ink = glyphs.new_from_image([20, 20, 20]).bandjoin(glyphs).copy(interpretation="srgb")
            canvas = canvas.composite2(ink, "over", x=x, y=y + 8)[:3] if glyphs.width > 1 else canvas
    canvas.cast("uchar").pngsave(str(path))


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(results))
    chart(results, out / "bench.png")
