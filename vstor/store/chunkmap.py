"""Per-volume map from byte ranges to journal records, with copy-on-write sharing between
a volume and its snapshots. Pure logic, no I/O.

Memory grows with allocated data, not with the provisioned size:

* The volume is cut into chunks of ``chunk_size`` bytes. Chunk slots live in leaves of
  LEAF_SLOTS machine words (``array('Q')``), created on first use; an untouched volume
  of any size holds no leaf. A slot is EMPTY (reads as zeros), the location of one
  record that covers the whole chunk (the common case: 8 bytes per chunk), or FRAGMENTED.
* A fragmented chunk's extents sit in its leaf's ``overlays[chunk]``: a sorted list of
  non-overlapping ``(start, end, loc)`` with absolute volume offsets. Holes read as zeros.

Sharing: :meth:`VolumeMap.share` gives a new map holding the same :class:`Leaf` objects
(a snapshot costs one pointer per leaf, no data and no slot is copied). ``Leaf.refs``
counts the maps holding a leaf; a map copies a shared leaf before it changes it. A leaf
object is never changed while shared, except by :meth:`VolumeMap.remap_loc`, which
replaces a record by a copy of the same bytes (GC) and is therefore right for every holder.

Invariant: ``on_ref(loc, delta)`` counts references per journal *segment* (``loc >> 32``)
and per *leaf object*: +n when n bytes of a leaf start to reference a record of the
segment, -n when they stop, +all when a shared leaf is copied, -all when the last map
releases a leaf. Each leaf keeps its own per-segment totals (``Leaf.segs``), so a copy or a
release costs one call per segment the leaf references, not one per extent (a 512 MiB leaf
of a volume aged by random writes holds 90,000 extents). A segment is referenced by some
map iff its count is non-zero (segment deletion relies on that); data shared by several
leaf versions is counted once per version, so the count is an upper bound of the live bytes.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterator

LEAF_BITS = 10
LEAF_SLOTS = 1 << LEAF_BITS
LEAF_MASK = LEAF_SLOTS - 1
EMPTY = 0
FRAGMENTED = 1  # real locations are >= 1 << 32, so 0 and 1 are free as markers
SEG_SHIFT = 32  # loc >> SEG_SHIFT is the segment (format.LOC_SHIFT)

Extent = tuple[int, int, int]  # (start, end, loc), absolute volume byte offsets


class Leaf:
    """LEAF_SLOTS chunk slots and the overlays of their fragmented chunks."""

    __slots__ = ("slots", "overlays", "refs", "owned", "segs")

    def __init__(self, slots: array | None = None, overlays: dict[int, list[Extent]] | None = None) -> None:
        self.slots = array("Q", bytes(8 * LEAF_SLOTS)) if slots is None else slots
        self.overlays: dict[int, list[Extent]] = {} if overlays is None else overlays
        self.refs = 1
        self.owned: set[int] = set()  # chunks whose overlay list no other leaf shares
        # segment -> bytes this leaf references there; None until first needed for a leaf loaded
        # from a checkpoint (start-up would otherwise sum every leaf version's extents)
        self.segs: dict[int, int] | None = {}

    def copy(self) -> Leaf:
        """A private copy. Overlay lists are shared, not copied, so a copy costs 8 KiB plus one
        dict entry per fragmented chunk, not the extents themselves. A shared list is never
        changed in place (a change builds a new one); only lists in ``owned`` are, and a copy
        ends that ownership on both sides."""
        self.owned = set()
        leaf = Leaf(array("Q", self.slots), dict(self.overlays))
        leaf.segs = None if self.segs is None else dict(self.segs)
        return leaf

    def totals(self, chunk_size: int) -> dict[int, int]:
        """Bytes referenced per segment (computed once for a leaf loaded from a checkpoint)."""
        if self.segs is None:
            segs: dict[int, int] = {}
            for loc, n in Counter(self.slots).items():
                if loc > FRAGMENTED:
                    segs[loc >> SEG_SHIFT] = segs.get(loc >> SEG_SHIFT, 0) + n * chunk_size
            for ext in self.overlays.values():
                for s, e, loc in ext:
                    segs[loc >> SEG_SHIFT] = segs.get(loc >> SEG_SHIFT, 0) + e - s
            self.segs = segs
        return self.segs

    def count(self, loc: int, delta: int, chunk_size: int) -> None:
        """Keep the totals when ``delta`` bytes of this leaf start (or stop) referencing ``loc``."""
        segs = self.totals(chunk_size)
        seg = loc >> SEG_SHIFT
        left = segs.get(seg, 0) + delta
        if left:
            segs[seg] = left
        else:
            del segs[seg]

    def extents(self, key: int, chunk_size: int) -> Iterator[tuple[int, list[Extent]]]:
        """(chunk, extents) of every allocated chunk, in order."""
        for i, slot in enumerate(self.slots):
            if slot == EMPTY:
                continue
            chunk = (key << LEAF_BITS) | i
            if slot == FRAGMENTED:
                yield chunk, self.overlays[chunk]
            else:
                yield chunk, [(chunk * chunk_size, (chunk + 1) * chunk_size, slot)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Leaf) and self.slots == other.slots and self.overlays == other.overlays

    __hash__ = None  # type: ignore[assignment]


class VolumeMap:
    def __init__(self, chunk_size: int, on_ref: Callable[[int, int], None] | None = None,
                 lineage: tuple[int, ...] = ()) -> None:
        if chunk_size <= 0 or chunk_size & (chunk_size - 1):
            raise ValueError("chunk size must be a power of two")
        self.chunk_size = chunk_size
        self.leaves: dict[int, Leaf] = {}
        self.mapped_bytes = 0
        self.lineage = lineage  # volume ids whose records this map may reference (store checks reads)
        self._on_ref = on_ref or (lambda loc, delta: None)

    @property
    def overlays(self) -> dict[int, list[Extent]]:
        """Every fragmented chunk's extents (a merged view, for inspection and tests)."""
        return {c: x for leaf in self.leaves.values() for c, x in leaf.overlays.items()}

    # -- slots ---------------------------------------------------------------------------
    def _slot(self, chunk: int) -> int:
        leaf = self.leaves.get(chunk >> LEAF_BITS)
        return EMPTY if leaf is None else leaf.slots[chunk & LEAF_MASK]

    def _ref(self, leaf: Leaf, loc: int, delta: int) -> None:
        self.mapped_bytes += delta
        leaf.count(loc, delta, self.chunk_size)
        self._on_ref(loc, delta)

    def _leaf_for_update(self, key: int, create: bool, cow: bool) -> Leaf | None:
        leaf = self.leaves.get(key)
        if leaf is None:
            if not create:
                return None
            leaf = self.leaves[key] = Leaf()
        elif leaf.refs > 1 and cow:  # copy-on-write: the other holders keep the old version
            leaf.refs -= 1
            leaf = self.leaves[key] = leaf.copy()
            for seg, n in leaf.totals(self.chunk_size).items():
                self._on_ref(seg << SEG_SHIFT, n)
        return leaf

    # -- queries -------------------------------------------------------------------------
    def chunk_extents(self, chunk: int) -> list[Extent]:
        leaf = self.leaves.get(chunk >> LEAF_BITS)
        slot = EMPTY if leaf is None else leaf.slots[chunk & LEAF_MASK]
        if slot == EMPTY:
            return []
        if slot == FRAGMENTED:
            return list(leaf.overlays[chunk])  # type: ignore[union-attr]
        base = chunk * self.chunk_size
        return [(base, base + self.chunk_size, slot)]

    def lookup(self, start: int, end: int) -> list[Extent]:
        """Mapped pieces of [start, end), clipped and in order; gaps read as zeros. Neighbouring
        pieces of the same record are joined, even across chunks."""
        out: list[Extent] = []
        cs = self.chunk_size
        leaves = self.leaves
        for chunk in range(start // cs, (end - 1) // cs + 1):
            leaf = leaves.get(chunk >> LEAF_BITS)
            if leaf is None:
                continue
            slot = leaf.slots[chunk & LEAF_MASK]
            if slot == EMPTY:
                continue
            if slot != FRAGMENTED:
                base = chunk * cs
                _add(out, max(start, base), min(end, base + cs), slot)
                continue
            for s, e, loc in leaf.overlays[chunk]:
                if e > start and s < end:
                    _add(out, max(s, start), min(e, end), loc)
        return out

    def iter_chunks(self) -> Iterator[tuple[int, list[Extent]]]:
        """Every allocated chunk with its extents, in chunk order."""
        for key in sorted(self.leaves):
            for chunk, extents in self.leaves[key].extents(key, self.chunk_size):
                yield chunk, list(extents)

    def allocated_chunks(self) -> int:
        return sum(LEAF_SLOTS - leaf.slots.count(EMPTY) for leaf in self.leaves.values())

    # -- sharing -------------------------------------------------------------------------
    def share(self, lineage: tuple[int, ...] | None = None) -> VolumeMap:
        """A map with the same content that shares every leaf (O(leaves), no slot copied)."""
        other = VolumeMap(self.chunk_size, self._on_ref, self.lineage if lineage is None else lineage)
        other.leaves = dict(self.leaves)
        for leaf in other.leaves.values():
            leaf.refs += 1
        other.mapped_bytes = self.mapped_bytes
        return other

    def release(self) -> None:
        """Drop every leaf; references of leaves no other map holds are returned."""
        for leaf in self.leaves.values():
            leaf.refs -= 1
            if leaf.refs == 0:
                for seg, n in leaf.totals(self.chunk_size).items():
                    self._on_ref(seg << SEG_SHIFT, -n)
        self.leaves = {}
        self.mapped_bytes = 0

    # -- updates -------------------------------------------------------------------------
    def map(self, start: int, end: int, loc: int) -> None:
        """Point [start, end) at the record ``loc``, replacing what was there."""
        self._update(start, end, loc, cow=True)

    def unmap(self, start: int, end: int) -> None:
        """Make [start, end) read as zeros and free what it referenced."""
        self._update(start, end, EMPTY, cow=True)

    def remap_loc(self, start: int, end: int, old: int, new: int) -> int:
        """Point the pieces of [start, end) that reference ``old`` at ``new``, in place even in a
        shared leaf: ``new`` must hold the same bytes (a GC copy). Returns the bytes moved."""
        moved = 0
        for s, e, loc in self.lookup(start, end):
            if loc == old:
                self._update(s, e, new, cow=False)
                moved += e - s
        return moved

    def _update(self, start: int, end: int, loc: int, cow: bool) -> None:
        cs = self.chunk_size
        for chunk in range(start // cs, (end - 1) // cs + 1):
            key = chunk >> LEAF_BITS
            leaf = self._leaf_for_update(key, loc != EMPTY, cow)
            if leaf is None:
                continue
            base = chunk * cs
            a, b = max(start, base), min(end, base + cs)
            if a == base and b == base + cs:
                self._replace_chunk(leaf, chunk, loc)
            else:
                self._update_partial(leaf, chunk, a, b, loc)
            if loc == EMPTY and leaf.refs == 1 and leaf.slots.count(EMPTY) == LEAF_SLOTS:
                del self.leaves[key]

    def _replace_chunk(self, leaf: Leaf, chunk: int, loc: int) -> None:
        i = chunk & LEAF_MASK
        slot = leaf.slots[i]
        if slot == FRAGMENTED:
            leaf.owned.discard(chunk)
            for s, e, old in leaf.overlays.pop(chunk):
                self._ref(leaf, old, -(e - s))
        elif slot != EMPTY:
            self._ref(leaf, slot, -self.chunk_size)
        leaf.slots[i] = loc
        if loc != EMPTY:
            self._ref(leaf, loc, self.chunk_size)

    def _update_partial(self, leaf: Leaf, chunk: int, a: int, b: int, loc: int) -> None:
        slot = leaf.slots[chunk & LEAF_MASK]
        if slot == FRAGMENTED:
            ext = leaf.overlays[chunk] if chunk in leaf.owned else list(leaf.overlays[chunk])
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
            self._ref(leaf, old, -(min(e, b) - max(s, a)))
        if lo < hi and ext[lo][0] < a:
            new.append((ext[lo][0], a, ext[lo][2]))
        if loc != EMPTY:
            new.append((a, b, loc))
            self._ref(leaf, loc, b - a)
        if lo < hi and ext[hi - 1][1] > b:
            new.append((b, ext[hi - 1][1], ext[hi - 1][2]))
        ext[lo:hi] = new
        w0, w1 = max(0, lo - 1), min(len(ext), lo + len(new) + 1)  # neighbours may continue the record
        ext[w0:w1] = _merge(ext[w0:w1])
        self._store_extents(leaf, chunk, ext)

    def _store_extents(self, leaf: Leaf, chunk: int, extents: list[Extent]) -> None:
        base = chunk * self.chunk_size
        i = chunk & LEAF_MASK
        if not extents:
            leaf.overlays.pop(chunk, None)
            leaf.owned.discard(chunk)
            leaf.slots[i] = EMPTY
        elif len(extents) == 1 and extents[0][0] == base and extents[0][1] == base + self.chunk_size:
            leaf.overlays.pop(chunk, None)
            leaf.owned.discard(chunk)
            leaf.slots[i] = extents[0][2]
        else:
            leaf.overlays[chunk] = extents
            leaf.owned.add(chunk)
            leaf.slots[i] = FRAGMENTED


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


def remap_versions(leaves: list[Leaf], chunk: int, a: int, b: int, old: int, new: int, chunk_size: int,
                   on_ref: Callable[[int, int], None]) -> int:
    """GC: in each of the distinct leaf versions ``leaves``, point the pieces of [a, b) (inside
    ``chunk``) that reference ``old`` at ``new``, a copy of the same bytes. The change is made
    in place, for every map holding these leaves. An overlay list that several versions share
    is changed once; the references move in ``on_ref`` once per version, as they are counted.
    Returns the bytes moved, summed over versions."""
    i = chunk & LEAF_MASK
    base, top = chunk * chunk_size, (chunk + 1) * chunk_size
    done: dict[int, int] = {}  # id(list) -> bytes moved in it
    total = 0
    for leaf in leaves:
        slot = leaf.slots[i]
        if slot == old:
            if a <= base and b >= top:
                leaf.slots[i] = new
                n = chunk_size
            else:  # only part of the chunk moves: it becomes fragmented in this version
                ext = [(base, max(a, base), old)] if a > base else []
                ext.append((max(a, base), min(b, top), new))
                if b < top:
                    ext.append((b, top, old))
                leaf.overlays[chunk] = ext
                leaf.owned.add(chunk)
                leaf.slots[i] = FRAGMENTED
                n = min(b, top) - max(a, base)
        elif slot == FRAGMENTED:
            lst = leaf.overlays[chunk]
            n = done.get(id(lst), -1)
            if n < 0:
                n = done[id(lst)] = _remap_list(lst, a, b, old, new)
            if len(lst) == 1 and lst[0][0] == base and lst[0][1] == top:  # whole chunk, one record
                leaf.slots[i] = lst[0][2]
                del leaf.overlays[chunk]
                leaf.owned.discard(chunk)
        else:
            continue
        if n:
            leaf.count(old, -n, chunk_size)
            leaf.count(new, n, chunk_size)
            on_ref(old, -n)
            on_ref(new, n)
            total += n
    return total


def _remap_list(ext: list[Extent], a: int, b: int, old: int, new: int) -> int:
    """Replace, in place, the pieces of [a, b) that reference ``old`` by ``new``; returns bytes."""
    out: list[Extent] = []
    moved = 0
    for s, e, loc in ext:
        if loc != old or e <= a or s >= b:
            out.append((s, e, loc))
            continue
        if s < a:
            out.append((s, a, old))
        out.append((max(s, a), min(e, b), new))
        moved += min(e, b) - max(s, a)
        if e > b:
            out.append((b, e, old))
    if moved:
        ext[:] = _merge(out)
    return moved
