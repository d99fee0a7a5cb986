"""What the host did between two looks (pure logic: it is given the counters to read).

The maintenance loop's steps decide by it whether to give way: GC waits while the host only
reads (maintloop.py), the fragment budget's compaction (reclaim.py) and defragmentation
(defrag.py) while it does any I/O. A read makes no garbage, so GC moves made during a read
stream only take its CPU and disk time; they are done once the volumes change again (then GC
must keep pace) or the host pauses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["HostActivity"]


class HostActivity:
    """Compares two counters at each :meth:`look` with their values at the previous one:
    ``reads``, the host reads served, and ``changes``, a figure that moves with every change
    of the volumes' data (host writes and trims, writes a replication peer applies, a volume
    deleted), all of which make garbage. Maintenance's own copies (GC moves, compactions,
    defragmentation) move neither."""

    def __init__(self, reads: Callable[[], int], changes: Callable[[], int]) -> None:
        self._reads, self._changes = reads, changes
        self._seen = self.counters()
        self.read = self.wrote = False

    @classmethod
    def of(cls, store: Any) -> HostActivity:
        """A Store's: its read counter, and the bytes written and trimmed per volume
        (PoolState.written, summed under the store's lock; a deleted volume's leave it)."""
        def changes() -> int:
            with store.locked():
                return sum(store.state.written.values())
        return cls(lambda: store.stats.reads, changes)

    def counters(self) -> tuple[int, int]:
        return self._reads(), self._changes()

    def look(self) -> HostActivity:
        """Take the counters now: ``read`` and ``wrote`` say what moved since the last look."""
        now = self.counters()
        self.read, self.wrote = now[0] != self._seen[0], now[1] != self._seen[1]
        self._seen = now
        return self

    def moved(self) -> bool:
        """Whether either counter moved since the last look (without taking a look)."""
        return self.counters() != self._seen

    @property
    def busy(self) -> bool:
        return self.read or self.wrote

    @property
    def reading_only(self) -> bool:
        return self.read and not self.wrote
