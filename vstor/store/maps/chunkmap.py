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
object is never changed while shared, except by ``remap_versions`` (leaf.py), which
replaces a record by a copy of the same bytes (GC) and is therefore right for every holder.

Resolved blocks: ``VolumeMap.resolved`` holds, for 4 KiB blocks that reads found, where their
bytes lie and their checksum (store/reads/resolved.py). Every change of the map's content drops
the entries it touches and counts in ``changes``; ``remap_versions`` leaves them, as it moves
the same bytes.

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

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from itertools import islice

from vstor.store.journal.format import BLOCK_SIZE
from vstor.store.maps.leaf import (  # noqa: F401  (re-exported: the map's vocabulary)
    EMPTY,
    FRAGMENTED,
    LEAF_BITS,
    LEAF_MASK,
    LEAF_SLOTS,
    SEG_SHIFT,
    Extent,
    Leaf,
    _merge,
    remap_versions,
)

_AFTER = 1 << 64  # sorts after any extent's end: (start, _AFTER) follows every extent at start


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
        # Blocks whose place reads have resolved (store/reads/resolved.py): block number -> its
        # packed place and checksum. Every change of this map's content drops the blocks it
        # touches and counts in ``changes``, so that a reader who resolved a block before a
        # change does not record it after (it compares ``changes`` under the store's lock).
        self.resolved: dict[int, int] = {}
        self.changes = 0

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

    def _leaf_for_update(self, key: int, create: bool) -> Leaf | None:
        leaf = self.leaves.get(key)
        if leaf is None:
            if not create:
                return None
            leaf = self.leaves[key] = Leaf()
        elif leaf.refs > 1:  # copy-on-write: the other holders keep the old version
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
        pieces of the same record are joined, even across chunks. Costs O(chunks of the range)
        within one or two leaves (every read), O(leaves of the map) beyond (a huge trim)."""
        out: list[Extent] = []
        if end <= start:
            return out
        cs = self.chunk_size
        c0, c1 = start // cs, (end - 1) // cs
        if (c1 >> LEAF_BITS) - (c0 >> LEAF_BITS) < 2:
            self._lookup_chunks(out, c0, c1, start, end)
            return out
        for key in self.leaf_keys(start, end):
            first = key << LEAF_BITS
            self._lookup_chunks(out, max(c0, first), min(c1, first | LEAF_MASK), start, end)
        return out

    def covering(self, start: int, end: int) -> int:
        """The location of the one record that holds all of [start, end), or EMPTY when no
        single extent does (a hole, the edge of a piece, or two chunks): the lookup of a small
        read's fast path (Store._read_small), which answers most 4 KiB reads in one step and
        leaves every other case to :meth:`lookup`."""
        cs = self.chunk_size
        chunk = start // cs
        if end <= start or (end - 1) // cs != chunk:
            return EMPTY
        leaf = self.leaves.get(chunk >> LEAF_BITS)
        if leaf is None:
            return EMPTY
        slot = leaf.slots[chunk & LEAF_MASK]
        if slot != FRAGMENTED:
            return slot
        ext = leaf.overlays[chunk]
        i = bisect_right(ext, (start, _AFTER)) - 1  # the last extent that starts at or before start
        if i < 0:
            return EMPTY
        _s, e, loc = ext[i]
        return loc if end <= e else EMPTY

    def _lookup_chunks(self, out: list[Extent], c0: int, c1: int, start: int, end: int) -> None:
        cs = self.chunk_size
        leaves = self.leaves
        for chunk in range(c0, c1 + 1):
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
            ext = leaf.overlays[chunk]
            # A small read of an aged chunk (90 extents) bisects to its first extent instead of
            # walking the list: the list is sorted and disjoint, so ends ascend as starts do.
            i = 0
            if start > ext[0][0]:
                i = bisect_left(ext, (start,))
                if i and ext[i - 1][1] > start:
                    i -= 1
            j = len(ext) if ext[-1][0] < end else bisect_left(ext, (end,), i)  # the extents that start before end
            if i >= j:
                continue
            s, e, loc = ext[i]
            _add(out, max(s, start), min(e, end), loc)  # only the first can continue the previous piece
            if j - i > 1:  # the list is joined already: the rest go in as they are, the last clipped
                out.extend(islice(ext, i + 1, j))
                s, e, loc = out[-1]
                if e > end:
                    out[-1] = (s, end, loc)

    def leaf_keys(self, start: int, end: int) -> list[int]:
        """Sorted keys of the leaves holding some chunk of [start, end): O(leaves of the map) at
        most, however large the range (a 1 PiB volume has 2 million leaf keys, few leaves)."""
        if end <= start:
            return []
        span = LEAF_SLOTS * self.chunk_size
        k0, k1 = start // span, (end - 1) // span
        if k1 - k0 < len(self.leaves):
            return [k for k in range(k0, k1 + 1) if k in self.leaves]
        return sorted(k for k in self.leaves if k0 <= k <= k1)

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
        self.resolved = {}
        self.changes += 1

    # -- updates -------------------------------------------------------------------------
    def map(self, start: int, end: int, loc: int) -> None:
        """Point [start, end) at the record ``loc``, replacing what was there."""
        self._update(start, end, loc)

    def unmap(self, start: int, end: int) -> None:
        """Make [start, end) read as zeros and free what it referenced."""
        self._update(start, end, EMPTY)

    def _update(self, start: int, end: int, loc: int) -> None:
        if end <= start:
            return
        self.changes += 1
        if self.resolved:
            self._forget(start, end)
        if loc == EMPTY:
            self._unmap(start, end)
            return
        cs = self.chunk_size
        for chunk in range(start // cs, (end - 1) // cs + 1):
            leaf = self._leaf_for_update(chunk >> LEAF_BITS, True)
            assert leaf is not None
            self._update_chunk(leaf, chunk, start, end, loc)

    def _forget(self, start: int, end: int) -> None:
        """Drop the resolved blocks that [start, end) touches: O(blocks of the range) or
        O(resolved blocks), whichever is fewer (a trim of a whole volume)."""
        d = self.resolved
        b0, b1 = start // BLOCK_SIZE, (end + BLOCK_SIZE - 1) // BLOCK_SIZE
        if b1 - b0 > len(d):
            for b in [b for b in d if b0 <= b < b1]:
                del d[b]
        else:
            for b in range(b0, b1):
                d.pop(b, None)

    def _update_chunk(self, leaf: Leaf, chunk: int, start: int, end: int, loc: int) -> None:
        base = chunk * self.chunk_size
        a, b = max(start, base), min(end, base + self.chunk_size)
        if a == base and b == base + self.chunk_size:
            self._replace_chunk(leaf, chunk, loc)
        else:
            self._update_partial(leaf, chunk, a, b, loc)

    def _unmap(self, start: int, end: int) -> None:
        """Unmap [start, end), visiting only the leaves it holds: a leaf the range covers is
        dropped whole (as :meth:`release` drops every leaf), the one or two it cuts are changed
        chunk by chunk. Cost: O(leaves of the map), not O(chunks of the range)."""
        cs = self.chunk_size
        span = LEAF_SLOTS * cs
        c0, c1 = start // cs, (end - 1) // cs
        for key in self.leaf_keys(start, end):
            if start <= key * span and (key + 1) * span <= end:
                self._drop_leaf(key)
                continue
            leaf = self._leaf_for_update(key, False)
            assert leaf is not None
            first = key << LEAF_BITS
            for chunk in range(max(c0, first), min(c1, first | LEAF_MASK) + 1):
                self._update_chunk(leaf, chunk, start, end, EMPTY)
            if leaf.slots.count(EMPTY) == LEAF_SLOTS:
                del self.leaves[key]

    def _drop_leaf(self, key: int) -> None:
        """Remove a whole leaf from this map; its references go if no other map holds it."""
        leaf = self.leaves.pop(key)
        totals = leaf.totals(self.chunk_size)
        self.mapped_bytes -= sum(totals.values())
        leaf.refs -= 1
        if leaf.refs == 0:
            for seg, n in totals.items():
                self._on_ref(seg << SEG_SHIFT, -n)

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
        leaf.mark(i)
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
        # the ones that overlap [a, b) instead of rebuilding the list. (x,) sorts before every
        # extent starting at x, so the bisect compares tuples in C, without a key function.
        # The end of the overlap is found by walking from there: a small write overlaps one or
        # two extents, and a second bisect of an aged chunk's list (~128 extents, cold in the
        # CPU's caches) cost more than the walk (docs/benchmarks.md section 12).
        lo = bisect_left(ext, (a,))
        if lo and ext[lo - 1][1] > a:
            lo -= 1  # the extent before starts before a and reaches into [a, b)
        hi, n = lo, len(ext)
        while hi < n and ext[hi][0] < b:
            hi += 1
        new: list[Extent] = []
        rejoin = False  # a piece of the new record itself is replaced (a record mapped again)
        for s, e, old in ext[lo:hi]:
            self._ref(leaf, old, -(min(e, b) - max(s, a)))
            rejoin = rejoin or old == loc
        if lo < hi and ext[lo][0] < a:
            new.append((ext[lo][0], a, ext[lo][2]))
        if loc != EMPTY:
            new.append((a, b, loc))
            self._ref(leaf, loc, b - a)
        if lo < hi and ext[hi - 1][1] > b:
            new.append((b, ext[hi - 1][1], ext[hi - 1][2]))
        ext[lo:hi] = new
        # Only the new extent can continue a neighbour (the list was joined before), and only a
        # record mapped in pieces (GC, replay) can: a host write's record is new. The pieces
        # left of the extents it replaced keep their records, so they can hold it only if
        # one of those was it.
        end = lo + len(new)
        if loc != EMPTY and (rejoin or (lo and ext[lo - 1][2] == loc) or (end < len(ext) and ext[end][2] == loc)):
            w0, w1 = max(0, lo - 1), min(len(ext), end + 1)
            ext[w0:w1] = _merge(ext[w0:w1])
        self._store_extents(leaf, chunk, ext)

    def _store_extents(self, leaf: Leaf, chunk: int, extents: list[Extent]) -> None:
        base = chunk * self.chunk_size
        i = chunk & LEAF_MASK
        leaf.mark(i)
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


def _add(out: list[Extent], s: int, e: int, loc: int) -> None:
    """Append a piece, joining it to the previous one when it continues the same record (a
    1 MiB write spans two 512 KiB chunks: one read, one pread)."""
    if out and out[-1][2] == loc and out[-1][1] == s:
        out[-1] = (out[-1][0], e, loc)
    else:
        out.append((s, e, loc))


