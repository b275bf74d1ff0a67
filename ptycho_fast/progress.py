"""A tiny dependency-free progress bar on stderr.

Quiet unless stderr is a terminal (logs and CI stay clean) or when ``enabled=False``
(``--quiet``); redraws at most every ``min_interval`` seconds::

    with Progress(total, "simulate") as bar:
        for block in blocks:
            ...
            bar.update(len(block))
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total: int, desc: str = "", enabled: bool | None = None, stream=None,
                 width: int = 28, min_interval: float = 0.1, unit: str = "it"):
        self.total = max(int(total), 0)
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.width = width
        self.min_interval = min_interval
        self.unit = unit
        self.count = 0
        self._start = time.perf_counter()
        self._last = 0.0
        self._drawn = False

    def update(self, n: int = 1) -> None:
        self.count += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last >= self.min_interval or self.count >= self.total:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.count / elapsed
        frac = min(self.count / self.total, 1.0) if self.total else 1.0
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        eta = (self.total - self.count) / rate if rate > 0 and self.total else 0.0
        prefix = f"{self.desc} " if self.desc else ""
        line = (f"\r{prefix}[{bar}] {frac:4.0%} {self.count}/{self.total} "
                f"{rate:.0f} {self.unit}/s {_fmt_time(elapsed)}<{_fmt_time(eta)}")
        self.stream.write(line)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
