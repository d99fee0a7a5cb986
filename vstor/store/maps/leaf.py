"""Chunk-map leaves: the unit that a volume and its snapshots share, and GC's in-place
repointing of every leaf version. Pure logic, no I/O (see chunkmap.py for the map).

A leaf holds LEAF_SLOTS chunk slots and the overlays of its fragmented chunks. ``refs``
counts the maps holding it; a map copies a shared leaf before changing it. Overlay lists are
shared between a leaf and its copies and changed in place only by the one leaf that owns
them. ``segs`` keeps the bytes the leaf references per journal segment, so that a copy or a
release reports one total per segment. ``origin`` and ``gen`` record how a copy differs from
the leaf it was copied from (lineage.py states the invariants), so that space accounting
compares only the chunks a copy changed.
"""

from __future__ import annotations

import weakref
from array import array
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

    __slots__ = ("slots", "overlays", "refs", "owned", "segs", "gen", "origin", "__weakref__")

    def __init__(self, slots: array | None = None, overlays: dict[int, list[Extent]] | None = None) -> None:
        self.slots = array("Q", bytes(8 * LEAF_SLOTS)) if slots is None else slots
        self.overlays: dict[int, list[Extent]] = {} if overlays is None else overlays
        self.refs = 1
        self.owned: set[int] = set()  # chunks whose overlay list no other leaf shares
        # segment -> bytes this leaf references there; None until first needed for a leaf loaded
        # from a checkpoint (start-up would otherwise sum every leaf version's extents)
        self.segs: dict[int, int] | None = {}
        self.gen = 0  # changes made in place by a map (mark)
        # (weak reference to the leaf this one was copied from, its gen then, bit per slot changed since)
        self.origin: tuple[weakref.ref[Leaf], int, int] | None = None

    def copy(self) -> Leaf:
        """A private copy. Overlay lists are shared, not copied, so a copy costs 8 KiB plus one
        dict entry per fragmented chunk, not the extents themselves. A shared list is never
        changed in place (a change builds a new one); only lists in ``owned`` are, and a copy
        ends that ownership on both sides."""
        self.owned = set()
        leaf = Leaf(array("Q", self.slots), dict(self.overlays))
        leaf.segs = None if self.segs is None else dict(self.segs)
        leaf.descend_from(self, 0)
        return leaf

    def descend_from(self, parent: Leaf, bits: int) -> None:
        """Record ``parent``, as it is now, as this leaf's origin, differing at most at the slots
        set in ``bits`` (lineage.py: copies, derived links, checkpoint loads)."""
        self.origin = (weakref.ref(parent), parent.gen, bits)

    def mark(self, i: int) -> None:
        """A map changed slot ``i`` (its value or its overlay list) in place. Copies made from
        this leaf before no longer know how they differ from it; this leaf's difference from its
        own origin gains slot i. On the write path: 0.34 µs per changed chunk of a copy, 0.12 µs
        otherwise (timeit, on the slower 2-core machine of docs/benchmarks.md)."""
        self.gen += 1
        o = self.origin
        if o is not None:
            self.origin = (o[0], o[1], o[2] | 1 << i)

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
        """Keep the totals when ``delta`` bytes of this leaf start (or stop) referencing ``loc``.
        Totals not computed yet need nothing: computed later, they sum the content as it is then.
        (Computing them here made GC's first moves after a restart sum every leaf version of the
        key, under the store lock: seconds with 1,000 snapshots.)"""
        segs = self.segs
        if segs is None:
            return
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
    is changed once. References are counted once per version, so each version's totals move,
    and ``on_ref`` moves their sum in one call.
    ``leaves`` must hold every version that may share those lists (all versions of the key in
    the maps whose lineage holds the record's volume: PoolState.versions); a version left out
    would see the change without counting it. Returns the bytes moved, summed over versions."""
    i = chunk & LEAF_MASK
    base, top = chunk * chunk_size, (chunk + 1) * chunk_size
    done: dict[int, int] = {}  # id(list) -> bytes moved in it
    total = 0
    split: list[Extent] | None = None  # the one new list of every version the move fragments
    whole = sum(1 for leaf in leaves if leaf.slots[i] == old)
    for leaf in leaves:
        slot = leaf.slots[i]
        if slot == old:
            if a <= base and b >= top:
                leaf.slots[i] = new
                n = chunk_size
            else:  # only part of the chunk moves: it becomes fragmented in these versions
                if split is None:
                    split = [(base, max(a, base), old)] if a > base else []
                    split.append((max(a, base), min(b, top), new))
                    if b < top:
                        split.append((b, top, old))
                leaf.overlays[chunk] = split  # shared, like a copy's lists, so versions stay alike
                if whole == 1:
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
            total += n
    if total:  # the pool's totals are sums over versions: moved once for all of them
        on_ref(old, -total)
        on_ref(new, total)
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
