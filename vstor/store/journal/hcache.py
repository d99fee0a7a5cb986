"""A byte-bounded cache of record headers and frame tables, so that a small read costs one
pread of the frames it touches instead of two.

Memory is bounded by ``budget`` bytes, whatever the pool's size: an entry keeps the frame
table as the raw on-disk bytes (32 per frame) and the frame offsets as a packed array, and
frame entries are decoded only when a read needs them. Past the budget a quarter of the
entries is evicted, from a random place in insertion order (:meth:`HeaderCache._evict`
says why not the oldest).

The write path caches each new record as it is, a (header, table) pair (:meth:`HeaderCache.put_raw`);
the first read that needs it builds the CachedRecord. So a write costs a dict insertion, and
the offsets and checksums are unpacked only for records that are read back.
"""

from __future__ import annotations

import random
import threading
from array import array
from itertools import accumulate
from typing import NamedTuple

from vstor.store.journal.format import FRAME_ENTRY, FRAME_ENTRY_SIZE, FRAME_SIZE, FrameEntry, RecordHeader, loc_segno

ENTRY_OVERHEAD = 400  # dict slot, tuple, header object, bytes and array headers (measured roughly)


class CachedRecord(NamedTuple):  # a tuple: half the cost of a frozen dataclass to build
    header: RecordHeader
    table: bytes
    offs: array  # offs[i]: start of frame i's stored bytes, relative to the frame data; offs[n] = end
    # When every frame is stored as is (no flag, stored length = logical length): their
    # checksums, so that a read verifies a range of frames without decoding each entry.
    raw_csums: array | None = None

    def entry(self, i: int) -> FrameEntry:
        stored_len, flags, _res, csum, nonce = FRAME_ENTRY.unpack_from(self.table, i * FRAME_ENTRY_SIZE)
        return FrameEntry(stored_len, flags, csum, nonce)

    @classmethod
    def build(cls, header: RecordHeader, table: bytes) -> CachedRecord:
        n = header.nframes
        if n == 1:  # a small record: most entries of an aged volume
            stored_len, flags1, _r, csum, _nonce = FRAME_ENTRY.unpack_from(table)
            return cls(header, bytes(table), array("I", (0, stored_len)),
                       None if flags1 or stored_len != header.length else array("Q", (csum,)))
        if not n:
            return cls(header, bytes(table), array("I", [0]), array("Q"))
        # One unpack of the whole table: built frame by frame, the entry of a 1 MiB record
        # (16 frames) took 9 us, now 5 (a header-cache miss, docs/benchmarks.md section 9).
        lens, flags, _res, csums, _nonces = zip(*FRAME_ENTRY.iter_unpack(table[: n * FRAME_ENTRY_SIZE]), strict=True)
        offs = array("I", (0, *accumulate(lens)))
        raw = (not any(flags) and lens[-1] == header.length - (n - 1) * FRAME_SIZE
               and lens[:-1].count(FRAME_SIZE) == n - 1)  # all but the last are whole frames
        return cls(header, bytes(table), offs, array("Q", csums) if raw else None)

    def cost(self) -> int:
        return ENTRY_OVERHEAD + len(self.table) + 4 * len(self.offs) + 8 * len(self.raw_csums or ())


Entry = CachedRecord | tuple[RecordHeader, bytes]  # a raw entry: (header, table), built on first get


def _cost(entry: Entry) -> int:
    return entry.cost() if type(entry) is CachedRecord else ENTRY_OVERHEAD + len(entry[1])


# 48 MiB: about 110,000 records of one frame (~430 bytes each), the live records of a 1 GiB
# volume aged by 120,000 random 4 KiB writes (docs/benchmarks.md section 9). A cache smaller
# than the records a sequential read visits misses on many of them (on every one while it
# evicted the oldest first); at 16 MiB an in-process read of a 512 MiB aged volume ran at half the speed
# (104 against 245 MiB/s warm). Defragmentation (defrag.py) then brings the records back to one
# per MiB.
BUDGET = 48 << 20


class HeaderCache:
    def __init__(self, budget: int = BUDGET, rng: random.Random | None = None) -> None:
        self.budget = budget
        self._rng = rng or random.Random()
        self.used = 0
        self._d: dict[int, Entry] = {}
        self._lock = threading.Lock()

    def get(self, loc: int) -> CachedRecord | None:
        hit = self._d.get(loc)
        if hit is None or type(hit) is CachedRecord:
            return hit
        rec = CachedRecord.build(*hit)
        with self._lock:
            if self._d.get(loc) is hit:  # not evicted or replaced meanwhile
                self._d[loc] = rec
                self.used += rec.cost() - _cost(hit)
        return rec

    def put(self, loc: int, rec: CachedRecord) -> CachedRecord:
        self._insert(loc, rec)
        return rec

    def put_raw(self, loc: int, header: RecordHeader, table: bytes) -> None:
        """Cache a record just written, unbuilt (see the module docstring)."""
        self._insert(loc, (header, table))

    def _insert(self, loc: int, entry: Entry) -> None:
        with self._lock:
            old = self._d.pop(loc, None)
            if old is not None:
                self.used -= _cost(old)
            self._d[loc] = entry
            self.used += _cost(entry)
            if self.used > self.budget:
                self._evict()

    def _evict(self) -> None:
        """Drop a quarter of the entries: a run of consecutive ones in insertion order, from a
        random place, not the oldest quarter. A sequential read of an aged volume whose
        records outnumber the cache visits them in the order they were written; evicting the
        oldest dropped exactly those it needed next, so it missed on every record (benchmarks
        §9). With a random run, a scan 1.2 times the cache's size finds 40% of its records
        (a simulation: as many as evicting entries at random). Each eviction drops any given
        entry with the same chance, a quarter, so records no read wants do not stay. Caller
        holds the lock."""
        keys = list(self._d)
        keys.pop()  # not the entry just inserted: its reader is about to use it
        n = max(1, len(keys) // 4)
        start = self._rng.randrange(len(keys) or 1)  # the run wraps: every entry has the same chance
        for key in keys[start : start + n] + keys[: max(0, start + n - len(keys))]:
            self.used -= _cost(self._d.pop(key))

    def drop_segments(self, segnos: set[int]) -> None:
        with self._lock:
            for key in [k for k in self._d if loc_segno(k) in segnos]:
                self.used -= _cost(self._d.pop(key))

    def __len__(self) -> int:
        return len(self._d)
