"""Progress for long work: periodic lines with rate and ETA, quiet when asked.

One small reporter instead of a dependency: it writes to stderr at most every
``interval`` seconds (and at the end), so logs stay readable under CI and in files.
Set ``MLFLOW_AMNESIA_QUIET=1`` (tests do) to silence it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


def _quiet_default() -> bool:
    return os.environ.get("MLFLOW_AMNESIA_QUIET", "").strip() not in ("", "0", "false", "no")


def _fmt_seconds(s: float) -> str:
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


class Progress:
    """Report ``done/total`` with rate and ETA.

    >>> p = Progress("rollback", total=10, unit="steps", quiet=True)
    >>> for _ in range(10): p.update()
    >>> p.close()
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "items",
        interval: float = 2.0,
        quiet: bool | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.interval = interval
        self.quiet = _quiet_default() if quiet is None else quiet
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = time.monotonic()
        self._last = self.start
        self._first: tuple[float, int] | None = None  # (time, done) at the first update: warm-up excluded

    def update(self, n: int = 1, **extra: object) -> None:
        self.done += n
        now = time.monotonic()
        if self._first is None:
            self._first = (now, self.done)
        if now - self._last >= self.interval:
            self._last = now
            self._emit(now, extra)

    def _rate(self, now: float, final: bool) -> float:
        """Items per second. While running: since the first update, so a slow first item (imports,
        warm-up, a data set loading) does not make the ETA of the rest hours long; 0 until a
        second update has been seen. At the end: over the whole time."""
        if final or self._first is None:
            elapsed = now - self.start
            return self.done / elapsed if elapsed > 0 and self.done else 0.0
        t0, d0 = self._first
        return (self.done - d0) / (now - t0) if now > t0 and self.done > d0 else 0.0

    def _fmt_rate(self, rate: float) -> str:
        """``12.3 steps/s``, or below one a second ``4.2 s/model`` (never ``0.0 models/s``)."""
        if rate >= 1.0:
            return f"{rate:.1f} {self.unit}/s"
        one = self.unit[:-1] if self.unit.endswith("s") and len(self.unit) > 1 else self.unit
        return f"{_fmt_seconds(1.0 / rate)}/{one}"

    def _emit(self, now: float, extra: dict, final: bool = False) -> None:
        if self.quiet:
            return
        elapsed = now - self.start
        rate = self._rate(now, final)
        parts = [f"{self.label}: {self.done}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"]
        if rate > 0:
            parts.append(self._fmt_rate(rate))
        if final:
            parts.append(f"in {_fmt_seconds(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"ETA {_fmt_seconds((self.total - self.done) / rate)}")
        parts += [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items()]
        print("  ".join(parts), file=self.stream, flush=True)

    def close(self, **extra: object) -> None:
        self._emit(time.monotonic(), extra, final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def info(msg: str, *, quiet: bool | None = None) -> None:
    """Print one status line to stderr unless quiet."""
    if not (_quiet_default() if quiet is None else quiet):
        print(msg, file=sys.stderr, flush=True)
