"""What the host did between two looks (pure logic: it is given the counters to read).

The maintenance loop's steps decide by it whether to give way: GC waits while the host only
reads (maintloop.py), compaction and defragmentation while it does any I/O. A read makes no
garbage, so GC moves made during a read stream only take its CPU and disk time; they are
done once the volumes change again (then GC must keep pace) or the host pauses.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["HostActivity"]


class HostActivity:
    """Compares two counters at each :meth:`look` with their values at the previous one:
    ``reads``, the host reads served, and ``changes``, a figure that moves with every change
    of the volumes' data (host writes and trims, writes a replication peer applies, a volume
    deleted), all of which make garbage."""

    def __init__(self, reads: Callable[[], int], changes: Callable[[], int]) -> None:
        self._reads, self._changes = reads, changes
        self._seen = (reads(), changes())
        self.read = self.wrote = False

    def look(self) -> HostActivity:
        """Take the counters now: ``read`` and ``wrote`` say what moved since the last look."""
        now = (self._reads(), self._changes())
        self.read, self.wrote = now[0] != self._seen[0], now[1] != self._seen[1]
        self._seen = now
        return self

    @property
    def reading_only(self) -> bool:
        return self.read and not self.wrote
