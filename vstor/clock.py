"""An injectable clock, so that timers, schedules and timeouts test without sleeping."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class WallClock(Protocol):
    """What only needs timestamps takes this (a :class:`Clock`, or the compliance clock)."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch."""


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (for timestamps)."""

    def monotonic(self) -> float:
        """Monotonic seconds (for intervals)."""

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Wait for ``event`` up to ``timeout`` seconds; True if it was set."""


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(timeout)


class ManualClock:
    """A clock that only moves when told to. ``wait`` returns at once, as if the timeout passed."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.mono = 0.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.is_set()
