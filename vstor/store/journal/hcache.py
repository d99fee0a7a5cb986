"""A byte-bounded cache of record headers and frame tables, so that a small read costs one
pread of the frames it touches instead of two.

Memory is bounded by ``budget`` bytes, whatever the pool's size: an entry keeps the frame
table as the raw on-disk bytes (32 per frame) and, once built, the frame offsets as a packed
array (a tuple for one frame), and frame entries are decoded only when a read needs them.
Past the budget a quarter of the entries is evicted, from a random place in insertion order
(:meth:`HeaderCache._evict` says why not the oldest).

The write path caches each new record as it is, its 64 packed header bytes followed by its
table in one ``bytes`` (:meth:`HeaderCache.put_raw`), and a read's miss caches the bytes it
read and verified, as they are (:meth:`HeaderCache.put_read`). A record of one frame (every write of up to
64 KiB, which an aged volume is made of) stays packed, about 210 bytes, and each hit builds its
read form again (1.5-2 us); a larger record is built on its first hit and kept built. Built,
a one-frame entry took 640 bytes: a 1 GiB volume aged by small writes, with GC's moves, leaves
about 300,000 of them, which now fit in the budget.

Costs are what the entries really take (tests/test_hcache.py measures them with tracemalloc),
so that the budget is the cache's memory.
"""

from __future__ import annotations

import random
import struct
import threading
from array import array
from collections.abc import Sequence
from itertools import accumulate
from typing import NamedTuple

from vstor.store.journal.format import (
    FRAME_ENTRY,
    FRAME_ENTRY_SIZE,
    FRAME_SIZE,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    SUMS_VERSION,
    FrameEntry,
    RecordHeader,
    loc_segno,
    trusted_record_header,
)

# Memory of an entry besides its variable parts, with its dict slot and key (tracemalloc,
# CPython 3.11): a built one is the tuple, the header tuple and its integers, the table's bytes
# object and two arrays; a packed one is one bytes object.
ENTRY_OVERHEAD = 600
PACKED_OVERHEAD = 120
_ONE_FRAME = struct.Struct(RECORD_HEADER.format + FRAME_ENTRY.format[1:])  # a packed entry's header and first entry


def random_run(keys: list, rng: random.Random) -> list:
    """A quarter of ``keys`` (at least one), consecutive from a random place and wrapping
    around, so that each key is in the run with the same chance (see HeaderCache._evict)."""
    n = max(1, len(keys) // 4)
    start = rng.randrange(len(keys) or 1)
    return keys[start : start + n] + keys[: max(0, start + n - len(keys))]


class CachedRecord(NamedTuple):  # a tuple: half the cost of a frozen dataclass to build
    header: RecordHeader
    table: bytes
    offs: Sequence[int]  # offs[i]: start of frame i's stored bytes, relative to the frame data; offs[n] = end
    # When every frame is stored as is (no flag, stored length = logical length): their
    # checksums, so that a read verifies a range of frames without decoding each entry.
    raw_csums: Sequence[int] | None = None

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

    @classmethod
    def from_packed(cls, packed: bytes) -> CachedRecord:
        """Build from a packed entry (header as written, then table): a record of one frame with
        one unpack and tuples (1.5-2 us), since such entries are built again on every get."""
        if len(packed) >= _ONE_FRAME.size:  # else no frame
            (_m, ver, rtype, nframes, group, volume, seq, offset, length, stored, tstamp, _c,
             stored_len, flags, _r, csum, _n) = _ONE_FRAME.unpack_from(packed)
            if nframes == 1:
                header = RecordHeader(rtype, 1, group, volume, seq, offset, length, stored, tstamp,
                                      ver == SUMS_VERSION)
                return cls(header, packed[RECORD_HEADER_SIZE:], (0, stored_len),
                           None if flags or stored_len != length else (csum,))
        return cls.build(trusted_record_header(packed), packed[RECORD_HEADER_SIZE:])

    def cost(self) -> int:
        return ENTRY_OVERHEAD + len(self.table) + 4 * len(self.offs) + 8 * len(self.raw_csums or ())


Entry = CachedRecord | bytes  # bytes: a packed entry (header, then table), built on first get


def _stays_packed(rec: CachedRecord) -> bool:
    """Whether an entry stays packed when read (built again on each get, 1.5-2 us, so that three
    times as many fit) rather than kept built: records of at most one frame."""
    return rec.header.nframes < 2


def _cost(entry: Entry) -> int:
    return entry.cost() if type(entry) is CachedRecord else PACKED_OVERHEAD + len(entry)


# 64 MiB: about 300,000 packed records of one frame or 100,000 built ones; a 1 GiB volume
# aged by 120,000 random 4 KiB writes holds about 110,000 live ones, and GC's moves add more
# (docs/benchmarks.md section 9). A cache smaller than the records a sequential read visits
# misses on many of them (on every one while it evicted the oldest first); at 16 MiB an
# in-process read of a 512 MiB aged volume ran at half the speed (104 against 245 MiB/s warm).
# Defragmentation (defrag.py) then brings the records back to one per MiB. (Until 2026-12-06
# the budget was 48 MiB of entries counted at 430-450 bytes each: 48 MiB in fact when
# unbuilt, 68 when built.)
BUDGET = 64 << 20


def one_frame(packed: bytes) -> tuple[int, int, int, int, int, bool, bool] | None:
    """(rtype, volume, offset, length, csum, sums, as_is) of a packed entry whose record is one
    frame (every write of up to 64 KiB), read without building the entry: a small read's fast
    path (vstor/store/reads/small.py). ``as_is``: the frame is stored as is (no flag: lz4 did
    not shrink it, no encryption). None for a record of several frames or none."""
    if len(packed) < _ONE_FRAME.size:
        return None
    (_m, ver, rtype, nframes, _g, volume, _seq, offset, length, _st, _t, _c,
     stored_len, flags, _r, csum, _n) = _ONE_FRAME.unpack_from(packed)
    if nframes != 1:
        return None
    return rtype, volume, offset, length, csum, ver == SUMS_VERSION, not flags and stored_len == length


class HeaderCache:
    def __init__(self, budget: int = BUDGET, rng: random.Random | None = None) -> None:
        self.budget = budget
        self._rng = rng or random.Random()
        self.used = 0
        self._d: dict[int, Entry] = {}
        self._lock = threading.Lock()

    def get(self, loc: int) -> CachedRecord | None:
        hit = self._d.get(loc)
        if hit is None or isinstance(hit, CachedRecord):
            return hit
        rec = CachedRecord.from_packed(hit)
        if _stays_packed(rec):
            return rec
        with self._lock:
            if self._d.get(loc) is hit:  # not evicted or replaced meanwhile
                self._d[loc] = rec
                self.used += rec.cost() - _cost(hit)
                if self.used > self.budget:  # built entries take three times a packed one's memory
                    self._evict()
        return rec

    def peek(self, loc: int) -> Entry | None:
        """The entry of ``loc`` as it is kept, packed (``bytes``: see :func:`one_frame`) or built,
        without building it: for a small read's fast path, which reads what it needs of either."""
        return self._d.get(loc)

    def put(self, loc: int, rec: CachedRecord) -> CachedRecord:
        self._insert(loc, rec)
        return rec

    def put_read(self, loc: int, packed: bytes) -> CachedRecord:
        """Cache a record whose header a read fetched and verified (``packed``: its 64 header
        bytes and table as read); returns its read form. A record of one frame is kept packed,
        as :meth:`put_raw` keeps it: built on a miss, such entries took three times the memory
        and crowded out the packed ones, so that a scan's misses caused more misses
        (benchmarks.md section 9)."""
        rec = CachedRecord.from_packed(packed)
        self._insert(loc, packed if _stays_packed(rec) else rec)
        return rec

    def put_raw(self, loc: int, packed: bytes) -> None:
        """Cache a record just written, unbuilt: ``packed`` is its header as written (64 bytes)
        followed by its table (see the module docstring)."""
        self._insert(loc, packed)

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
        for key in random_run(keys, self._rng):
            self.used -= _cost(self._d.pop(key))

    def drop_segments(self, segnos: set[int]) -> None:
        with self._lock:
            for key in [k for k in self._d if loc_segno(k) in segnos]:
                self.used -= _cost(self._d.pop(key))

    def __len__(self) -> int:
        return len(self._d)
