"""Progress of a bulk run: a live bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressReporter:
    """Call with the run's counters; draws at most every ``every_s`` (a bar) or ``log_every_s``
    (a line, when the stream is not a terminal)."""

    def __init__(self, stream: TextIO = sys.stderr, every_s: float = 0.2, log_every_s: float = 5.0) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.every_s = every_s if self.tty else log_every_s
        self._last = 0.0

    def __call__(self, counts: dict[str, int], elapsed_s: float, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < self.every_s:
            return
        self._last = now
        total = counts.get("total", 0)
        done = sum(counts.get(k, 0) for k in ("rendered", "skipped", "failed"))
        rate = done / elapsed_s if elapsed_s > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float("inf")
        eta_text = f"{eta:5.0f}s" if eta != float("inf") else "    ?"
        text = (
            f"{done}/{total} ({counts.get('rendered', 0)} rendered, {counts.get('skipped', 0)} skipped, "
            f"{counts.get('failed', 0)} failed)  {rate:6.1f} img/s  ETA {eta_text}"
        )
        if self.tty:
            width = 30
            filled = int(width * done / total) if total else width
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}")
            if final:
                self.stream.write("\n")
        else:
            self.stream.write(f"rethumb: {text}\n")
        self.stream.flush()
