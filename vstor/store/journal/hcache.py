"""A byte-bounded cache of record headers and frame tables, so that a small read costs one
pread of the frames it touches instead of two.

Memory is bounded by ``budget`` bytes, whatever the pool's size: an entry keeps the frame
table as the raw on-disk bytes (32 per frame) and the frame offsets as a packed array, and
frame entries are decoded only when a read needs them. The oldest quarter is evicted when
the budget is exceeded (dicts keep insertion order).

The write path caches each new record as it is, a (header, table) pair (:meth:`HeaderCache.put_raw`);
the first read that needs it builds the CachedRecord. So a write costs a dict insertion, and
the offsets and checksums are unpacked only for records that are read back.
"""

from __future__ import annotations

import threading
from array import array
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
        offs = array("I", [0])
        csums: array | None = array("Q")
        for i in range(header.nframes):
            stored_len, flags, _res, csum, _nonce = FRAME_ENTRY.unpack_from(table, i * FRAME_ENTRY_SIZE)
            offs.append(offs[-1] + stored_len)
            if csums is not None:
                if flags or stored_len != min(FRAME_SIZE, header.length - i * FRAME_SIZE):
                    csums = None
                else:
                    csums.append(csum)
        return cls(header, bytes(table), offs, csums)

    def cost(self) -> int:
        return ENTRY_OVERHEAD + len(self.table) + 4 * len(self.offs) + 8 * len(self.raw_csums or ())


Entry = CachedRecord | tuple[RecordHeader, bytes]  # a raw entry: (header, table), built on first get


def _cost(entry: Entry) -> int:
    return entry.cost() if type(entry) is CachedRecord else ENTRY_OVERHEAD + len(entry[1])


# 48 MiB: about 110,000 records of one frame (~430 bytes each), the live records of a 1 GiB
# volume aged by 120,000 random 4 KiB writes (docs/benchmarks.md section 9). Evicting the
# oldest quarter, a cache smaller than the records a sequential read visits misses on every
# one of them; at 16 MiB an in-process read of a 512 MiB aged volume ran at half the speed
# (104 against 245 MiB/s warm). Defragmentation (defrag.py) then brings the records back to one
# per MiB.
BUDGET = 48 << 20


class HeaderCache:
    def __init__(self, budget: int = BUDGET) -> None:
        self.budget = budget
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
                for key in list(self._d)[: max(1, len(self._d) // 4)]:
                    self.used -= _cost(self._d.pop(key))

    def drop_segments(self, segnos: set[int]) -> None:
        with self._lock:
            for key in [k for k in self._d if loc_segno(k) in segnos]:
                self.used -= _cost(self._d.pop(key))

    def __len__(self) -> int:
        return len(self._d)
