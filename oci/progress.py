"""Progress of long transfers on a terminal: one line per blob, redrawn at most five times a second.

Owns `terminal_progress(stream)`, a factory for RegistryClient's `progress`; it draws only when `stream` is a
terminal and the blob is at least 1 MiB, so scripts, logs and the daemon never see progress lines.
"""

from __future__ import annotations

import sys
import time

from .registry import Progress, ProgressFactory

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

MIN_SIZE = 1 << 20
INTERVAL = 0.2


class _Line(Progress):
    def __init__(self, stream: TextIO, label: str, total: int) -> None:
        self.stream, self.label, self.total = stream, label, total
        self.done = 0
        self.started = self.last = time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= INTERVAL:
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.started, 1e-3) / (1 << 20)
        percent = 100 * self.done // max(self.total, 1)
        self.stream.write(f"\r{self.label}: {self.done >> 20}/{self.total >> 20} MiB ({percent}%) {rate:.1f} MiB/s ")
        self.stream.flush()

    def close(self) -> None:
        self._draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()


def terminal_progress(stream: TextIO | None = None) -> ProgressFactory:
    out = stream or sys.stderr

    def factory(label: str, total: int) -> Progress:
        if total >= MIN_SIZE and out.isatty():
            return _Line(out, label, total)
        return Progress()

    return factory
