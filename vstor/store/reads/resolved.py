"""Resolved blocks: a warm 4 KiB read in one dictionary lookup.

A 4 KiB read that the fast path (small.py) serves still walks the chunk map to the record
(a bisection in a fragmented chunk's extents), looks the record up in the header cache and
checks its fields. Each of those touches Python objects that the request before did not,
and a FUSE request runs on a thread just woken, with cold CPU caches: in the daemon that
walk costs 25-30 us of a 4 KiB read's ~35, where a woken ``preadv2`` and xxh3 of 4 KiB take
2-3 (docs/benchmarks.md section 9). So once the fast path has served an aligned block, the
block's map keeps where its bytes lie and their checksum (``VolumeMap.resolved``: block
number -> :func:`place`), and the next read of it costs one lookup, one ``preadv2`` without
waiting and one xxh3.

The guarantee: **a resolved read returns a block's bytes only if they hash to the checksum
of its current content**, so it never returns what the volume does not hold, and it never
decides an error. An entry is recorded under the store's lock only if the map has not
changed since the fast path looked the block up (``VolumeMap.changes``), and every change of
the map's content drops the entries it touches (``VolumeMap._update``); a map that replaces
another (a restore, a resume after an outage) starts empty. GC's moves leave entries as they
are: a move copies the same bytes, and an entry then names the old copy until its segment
is deleted (segment numbers are never reused). A read that finds the segment gone or bytes
that fail the checksum drops the entry, and one that finds the page cache without them
keeps it; either way the read goes on down the fast path and the general path, which read
again and report.

Only blocks of live volumes (not snapshots) on local pools, stored as is (no compression,
no encryption), 4 KiB-aligned, are resolved. Memory is bounded by RESOLVED_BUDGET over all
the maps of a pool (:class:`ResolvedBudget`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from xxhash import xxh3_64_intdigest

from vstor.errors import CorruptData
from vstor.store.journal.format import loc_pos, loc_segno, make_loc
from vstor.store.journal.hcache import random_run
from vstor.store.maps.chunkmap import VolumeMap
from vstor.store.storeparts import StoreParts

__all__ = ["ENTRY_COST", "RESOLVED_BUDGET", "ResolvedBudget", "ResolvedReadMixin", "place", "unplace"]

RESOLVED_BUDGET = 32 << 20  # bytes of entries over all of a pool's maps (~300,000 blocks: 1.2 GiB read at random)
ENTRY_COST = 110  # bytes an entry takes, with its dict slot and key (tests/test_resolved.py measures it)
CHECK_EVERY = 4096  # entries recorded between two sums of the maps' entries
_LOC_MASK = (1 << 64) - 1


def place(segno: int, pos: int, csum: int) -> int:
    """A resolved block as one integer: the xxh3-64 of its BLOCK_SIZE bytes, and where they
    lie (segment ``segno``, byte ``pos``). Never 0 or 1 (``pos`` follows a record header)."""
    return csum << 64 | make_loc(segno, pos)


def unplace(found: int) -> tuple[int, int, int]:
    """(segment, position, checksum) of a :func:`place`."""
    loc = found & _LOC_MASK
    return loc_segno(loc), loc_pos(loc), found >> 64


class ResolvedBudget:
    """Keeps the entries of all of a pool's maps under ``budget`` bytes: every CHECK_EVERY
    entries recorded it sums them, and while they take more it evicts a quarter of the
    largest map's, a run from a random place (as the header cache evicts, for the same
    reason: a scan that outgrows the budget still finds some). Caller holds the store's lock."""

    def __init__(self, budget: int = RESOLVED_BUDGET, rng: random.Random | None = None,
                 check_every: int = CHECK_EVERY) -> None:
        self.limit = budget // ENTRY_COST
        self._rng = rng or random.Random()
        self._every = check_every
        self._since = 0
        self.evicted = 0

    def recorded(self, maps: Iterable[VolumeMap]) -> None:
        """One entry was recorded in one of ``maps`` (all of the pool's live maps)."""
        self._since += 1
        if self._since < self._every:
            return
        self._since = 0
        live = [vm for vm in maps if vm.resolved]
        total = sum(len(vm.resolved) for vm in live)
        while total > self.limit and live:
            d = max(live, key=lambda vm: len(vm.resolved)).resolved
            run = random_run(list(d), self._rng)
            for b in run:
                del d[b]
            total -= len(run)
            self.evicted += len(run)


class ResolvedReadMixin(StoreParts):
    _resolved: ResolvedBudget

    def _read_resolved(self, vid: int, block: int, view: memoryview) -> bool:
        """Read block ``block`` of volume ``vid`` into ``view`` (BLOCK_SIZE bytes) if its map
        has it resolved, the page cache holds it and it matches its checksum. False in every
        other case, having dropped the entry if its bytes are gone or changed."""
        with self._lock:
            vm = self.state.maps.get(vid)
            found = None if vm is None else vm.resolved.get(block)
            if found is None:
                return False
            self._active_reads += 1
        gone = False
        try:
            segno, pos, csum = unplace(found)
            try:
                if self.journal.pread_cached(segno, pos, view):
                    if xxh3_64_intdigest(view) == csum:
                        return True
                    gone = True
            except (CorruptData, OSError):  # its segment deleted since (a GC move made the entry old),
                gone = True  # or the disk failing: the general path reads again and reports
        finally:
            self.done_reading()
        if gone:
            with self._lock:
                if vm.resolved.get(block) == found:  # type: ignore[union-attr]
                    del vm.resolved[block]  # type: ignore[union-attr]
        return False

    def _record_resolved(self, vm: VolumeMap, block: int, found: int, changes: int) -> None:
        """Record that ``block`` of ``vm`` is at ``found`` (:func:`place`), read and verified by
        the fast path, which looked it up when the map had made ``changes`` changes: if it has
        made another since, the block may hold other bytes now, and nothing is recorded."""
        with self._lock:
            if vm.changes == changes:
                vm.resolved[block] = found
                self._resolved.recorded(self.state.maps.values())
