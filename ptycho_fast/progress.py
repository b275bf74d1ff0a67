"""Progress bars on stderr: a thin adapter over ``tqdm``.

Quiet unless stderr is a terminal (logs and CI stay clean) or when ``enabled=False``
(``--quiet``); ``enabled=True`` reports to any stream, terminal or not. Redraws at most
every ``min_interval`` seconds::

    with Progress(total, "simulate", unit="pat") as bar:
        for block in blocks:
            ...
            bar.update(len(block))
            bar.desc = f"simulate loss {loss:.4g}"   # shown from the next redraw on
"""

from __future__ import annotations

import sys

from tqdm import tqdm

__all__ = ["Progress"]


class _tqdm(tqdm):
    # No background monitor thread (it only matters for tqdm's dynamic ``miniters``,
    # which Progress does not use: every update checks ``min_interval`` itself).
    monitor_interval = 0


class Progress:
    """``total`` items of ``unit``; ``desc`` (settable at any time) prefixes the bar;
    ``width`` is the bar's width in characters. ``count`` is the number of items so far
    (counted even when the bar is quiet)."""

    def __init__(self, total: int, desc: str = "", enabled: bool | None = None, stream=None,
                 width: int = 28, min_interval: float = 0.1, unit: str = "it"):
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:  # the default: only on a terminal
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = bool(enabled)
        self.width = width
        self.min_interval = min_interval
        self.unit = unit
        self.count = 0
        self._desc = desc
        self._bar = _tqdm(total=max(int(total), 0), desc=desc or None, file=self.stream,
                          disable=not self.enabled, mininterval=min_interval, miniters=1,
                          unit=unit, leave=True, dynamic_ncols=False,
                          bar_format="{l_bar}{bar:%d}{r_bar}" % int(width))

    @property
    def total(self) -> int:
        return self._bar.total

    @total.setter
    def total(self, value: int) -> None:
        self._bar.total = max(int(value), 0)

    @property
    def desc(self) -> str:
        return self._desc

    @desc.setter
    def desc(self, value: str) -> None:
        self._desc = value
        if self.enabled:
            self._bar.set_description_str(value or None, refresh=False)

    def update(self, n: int = 1) -> None:
        self.count += n
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
