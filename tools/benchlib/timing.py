"""The benchmarks' one timer: wall time of a block or of one call, on the monotonic perf counter."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["Timer", "timed"]


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``: the block's wall time (perf_counter_ns).
    Read inside the block, ``seconds`` is the time so far."""

    def __init__(self) -> None:
        self._t0 = self._t1 = 0

    def __enter__(self) -> Timer:
        self._t1 = 0
        self._t0 = time.perf_counter_ns()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._t1 = time.perf_counter_ns()

    @property
    def ns(self) -> int:
        return (self._t1 or time.perf_counter_ns()) - self._t0

    @property
    def seconds(self) -> float:
        return self.ns / 1e9


def timed(fn: Callable[..., object], *args: Any, **kwargs: Any) -> float:
    """Seconds taken by ``fn(*args, **kwargs)``."""
    with Timer() as t:
        fn(*args, **kwargs)
    return t.seconds
