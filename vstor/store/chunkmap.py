"""Per-volume map from byte ranges to journal records. Pure logic, no I/O.

Memory grows with allocated data, not with the provisioned size:

* The volume is cut into chunks of ``chunk_size`` bytes. Chunk slots live in leaves of
  LEAF_SLOTS machine words (``array('Q')``), created on first use; an untouched volume
  of any size holds no leaf. A slot is EMPTY (reads as zeros), the location of one
  record that covers the whole chunk (the common case: 8 bytes per chunk), or FRAGMENTED.
* A fragmented chunk's extents sit in ``overlays[chunk]``: a sorted list of
  non-overlapping ``(start, end, loc)`` with absolute volume offsets. Holes read as zeros.

Invariant: every mapped byte belongs to exactly one extent, and ``on_ref(loc, delta)`` is
called with +n when n bytes start to reference the record at ``loc`` and -n when they
stop. The store uses it to keep live bytes per segment for garbage collection.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator

LEAF_BITS = 10
LEAF_SLOTS = 1 << LEAF_BITS
EMPTY = 0
FRAGMENTED = 1  # real locations are >= 1 << 32, so 0 and 1 are free as markers

Extent = tuple[int, int, int]  # (start, end, loc), absolute volume byte offsets


class VolumeMap:
    def __init__(self, chunk_size: int, on_ref: Callable[[int, int], None] | None = None) -> None:
        if chunk_size <= 0 or chunk_size & (chunk_size - 1):
            raise ValueError("chunk size must be a power of two")
        self.chunk_size = chunk_size
        self.leaves: dict[int, array] = {}
        self.overlays: dict[int, list[Extent]] = {}
        self.mapped_bytes = 0
        self._on_ref = on_ref or (lambda loc, delta: None)

    # -- slots ---------------------------------------------------------------------------
    def _slot(self, chunk: int) -> int:
        leaf = self.leaves.get(chunk >> LEAF_BITS)
        return EMPTY if leaf is None else leaf[chunk & (LEAF_SLOTS - 1)]

    def _set_slot(self, chunk: int, value: int) -> None:
        key = chunk >> LEAF_BITS
        leaf = self.leaves.get(key)
        if leaf is None:
            if value == EMPTY:
                return
            leaf = self.leaves[key] = array("Q", bytes(8 * LEAF_SLOTS))
        leaf[chunk & (LEAF_SLOTS - 1)] = value
        if value == EMPTY and leaf.count(EMPTY) == LEAF_SLOTS:
            del self.leaves[key]

    def _ref(self, loc: int, delta: int) -> None:
        self.mapped_bytes += delta
        self._on_ref(loc, delta)

    # -- queries -------------------------------------------------------------------------
    def chunk_extents(self, chunk: int) -> list[Extent]:
        slot = self._slot(chunk)
        if slot == EMPTY:
            return []
        if slot == FRAGMENTED:
            return list(self.overlays[chunk])
        base = chunk * self.chunk_size
        return [(base, base + self.chunk_size, slot)]

    def lookup(self, start: int, end: int) -> list[Extent]:
        """Mapped pieces of [start, end), clipped and in order; gaps read as zeros. Neighbouring
        pieces of the same record are joined, even across chunks."""
        out: list[Extent] = []
        cs = self.chunk_size
        for chunk in range(start // cs, (end - 1) // cs + 1):
            slot = self._slot(chunk)
            if slot == EMPTY:
                continue
            if slot != FRAGMENTED:
                base = chunk * cs
                _add(out, max(start, base), min(end, base + cs), slot)
                continue
            for s, e, loc in self.overlays[chunk]:
                if e > start and s < end:
                    _add(out, max(s, start), min(e, end), loc)
        return out

    def iter_chunks(self) -> Iterator[tuple[int, list[Extent]]]:
        """Every allocated chunk with its extents, in chunk order."""
        for key in sorted(self.leaves):
            leaf = self.leaves[key]
            for i, slot in enumerate(leaf):
                if slot != EMPTY:
                    chunk = (key << LEAF_BITS) | i
                    yield chunk, self.chunk_extents(chunk)

    def allocated_chunks(self) -> int:
        return sum(LEAF_SLOTS - leaf.count(EMPTY) for leaf in self.leaves.values())

    # -- updates -------------------------------------------------------------------------
    def map(self, start: int, end: int, loc: int) -> None:
        """Point [start, end) at the record ``loc``, replacing what was there."""
        self._update(start, end, loc)

    def unmap(self, start: int, end: int) -> None:
        """Make [start, end) read as zeros and free what it referenced."""
        self._update(start, end, EMPTY)

    def _update(self, start: int, end: int, loc: int) -> None:
        cs = self.chunk_size
        for chunk in range(start // cs, (end - 1) // cs + 1):
            base = chunk * cs
            a, b = max(start, base), min(end, base + cs)
            if a == base and b == base + cs:
                self._replace_chunk(chunk, loc)
            else:
                self._update_partial(chunk, a, b, loc)

    def _replace_chunk(self, chunk: int, loc: int) -> None:
        for s, e, old in self.chunk_extents(chunk):
            self._ref(old, -(e - s))
        self.overlays.pop(chunk, None)
        self._set_slot(chunk, loc)
        if loc != EMPTY:
            self._ref(loc, self.chunk_size)

    def _update_partial(self, chunk: int, a: int, b: int, loc: int) -> None:
        slot = self._slot(chunk)
        if slot == FRAGMENTED:
            ext = self.overlays[chunk]
        elif slot == EMPTY:
            ext = []
        else:
            base = chunk * self.chunk_size
            ext = [(base, base + self.chunk_size, slot)]
        # Extents are sorted and disjoint, so starts and ends are both ascending: splice only
        # the ones that overlap [a, b) instead of rebuilding the list.
        lo = bisect_right(ext, a, key=_end)
        hi = bisect_left(ext, b, key=_start)
        new: list[Extent] = []
        for s, e, old in ext[lo:hi]:
            self._ref(old, -(min(e, b) - max(s, a)))
        if lo < hi and ext[lo][0] < a:
            new.append((ext[lo][0], a, ext[lo][2]))
        if loc != EMPTY:
            new.append((a, b, loc))
            self._ref(loc, b - a)
        if lo < hi and ext[hi - 1][1] > b:
            new.append((b, ext[hi - 1][1], ext[hi - 1][2]))
        ext[lo:hi] = new
        w0, w1 = max(0, lo - 1), min(len(ext), lo + len(new) + 1)  # neighbours may continue the record
        ext[w0:w1] = _merge(ext[w0:w1])
        self._store_extents(chunk, ext)

    def _store_extents(self, chunk: int, extents: list[Extent]) -> None:
        base = chunk * self.chunk_size
        if not extents:
            self.overlays.pop(chunk, None)
            self._set_slot(chunk, EMPTY)
        elif len(extents) == 1 and extents[0][0] == base and extents[0][1] == base + self.chunk_size:
            self.overlays.pop(chunk, None)
            self._set_slot(chunk, extents[0][2])
        else:
            self.overlays[chunk] = extents
            self._set_slot(chunk, FRAGMENTED)

    # -- serialization (checkpoint body) --------------------------------------------------
    def serialize(self) -> bytes:
        parts = [struct.pack("<II", len(self.leaves), len(self.overlays))]
        for key in sorted(self.leaves):
            parts.append(struct.pack("<Q", key))
            parts.append(self.leaves[key].tobytes())
        for chunk in sorted(self.overlays):
            ext = self.overlays[chunk]
            parts.append(struct.pack("<QI", chunk, len(ext)))
            parts.append(b"".join(struct.pack("<QQQ", *x) for x in ext))
        return b"".join(parts)

    @classmethod
    def deserialize(cls, data: memoryview, chunk_size: int, on_ref: Callable[[int, int], None]
                    ) -> tuple[VolumeMap, int]:
        """Rebuild a map; returns it and the number of bytes consumed. Calls on_ref for every extent."""
        vm = cls(chunk_size, on_ref)
        nleaves, noverlays = struct.unpack_from("<II", data, 0)
        pos = 8
        for _ in range(nleaves):
            (key,) = struct.unpack_from("<Q", data, pos)
            leaf = array("Q")
            leaf.frombytes(data[pos + 8 : pos + 8 + 8 * LEAF_SLOTS])
            vm.leaves[key] = leaf
            pos += 8 + 8 * LEAF_SLOTS
        for _ in range(noverlays):
            chunk, n = struct.unpack_from("<QI", data, pos)
            pos += 12
            vm.overlays[chunk] = [struct.unpack_from("<QQQ", data, pos + 24 * i) for i in range(n)]
            pos += 24 * n
        for _chunk, extents in vm.iter_chunks():
            for s, e, loc in extents:
                vm._ref(loc, e - s)
        return vm, pos


def _start(x: Extent) -> int:
    return x[0]


def _end(x: Extent) -> int:
    return x[1]


def _add(out: list[Extent], s: int, e: int, loc: int) -> None:
    """Append a piece, joining it to the previous one when it continues the same record (a
    1 MiB write spans two 512 KiB chunks: one read, one pread)."""
    if out and out[-1][2] == loc and out[-1][1] == s:
        out[-1] = (out[-1][0], e, loc)
    else:
        out.append((s, e, loc))


def _merge(extents: list[Extent]) -> list[Extent]:
    """Join neighbours that continue the same record (same loc, touching ranges)."""
    out: list[Extent] = []
    for s, e, loc in extents:
        if out and out[-1][2] == loc and out[-1][1] == s:
            out[-1] = (out[-1][0], e, loc)
        else:
            out.append((s, e, loc))
    return out
