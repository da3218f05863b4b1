"""Time for recording, injectable: tests step the wall clock without touching the
machine's (design.md §3: DST and clock steps must not overwrite or reorder)."""

from __future__ import annotations

import time


class Clock:
    """The machine's clocks. `wall_ms` is UTC epoch milliseconds."""

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()


class SteppableClock(Clock):
    """The real clock plus an offset that a test can step, as NTP or an operator
    would step a machine's clock. Monotonic time is not affected, as on Linux."""

    def __init__(self, offset_ms: int = 0) -> None:
        self.offset_ms = offset_ms

    def step(self, delta_ms: int) -> None:
        self.offset_ms += delta_ms

    def wall_ms(self) -> int:
        return super().wall_ms() + self.offset_ms
