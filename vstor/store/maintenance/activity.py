"""What the host did between two looks, from the store's request counters (pure logic).

The maintenance loop's steps decide by it whether to give way: GC waits while the host only
reads (reclaim.py), compaction and defragmentation while it does any I/O. A host read makes no
garbage, so GC moves made during a read stream only take its CPU and disk time; they are done
once the host writes again (then GC must keep pace) or pauses.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HostActivity"]


class HostActivity:
    """Compares the counters of ``stats`` (a store's Counters) at each :meth:`look` with those of
    the previous one. Writes and trims both count as writing: both make garbage."""

    def __init__(self, stats: Any) -> None:
        self._stats = stats
        self._seen = self._now()
        self.read = self.wrote = False

    def _now(self) -> tuple[int, int, int]:
        s = self._stats
        return s.reads, s.writes, s.trims

    def look(self) -> HostActivity:
        """Take the counters now: ``read`` and ``wrote`` say what changed since the last look."""
        now = self._now()
        self.read = now[0] != self._seen[0]
        self.wrote = now[1:] != self._seen[1:]
        self._seen = now
        return self

    @property
    def reading_only(self) -> bool:
        return self.read and not self.wrote
