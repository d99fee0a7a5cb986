"""Space accounting and diffs between chunk maps. Pure logic, no I/O.

Maps of one volume's family (the volume, its snapshots, clones made from them) share leaf
objects, and a leaf object held by one map only is private to it, so most of the work is
comparing leaf identities. Only where several versions of a leaf exist are slots compared.
A piece of data is identified by (chunk, record location) or, in a fragmented chunk, by
(start, end, record location) after cutting every version's extents at the boundaries of
all of them, so two maps share bytes exactly when they reference the same record there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from vstor.store.chunkmap import EMPTY, FRAGMENTED, LEAF_BITS, LEAF_SLOTS, Extent, Leaf, VolumeMap

Piece = tuple[int, int, int]  # (start, end, loc)


def account(maps: Sequence[VolumeMap], own: Sequence[int] = ()) -> tuple[list[tuple[int, int]], int]:
    """Per map: (exclusive, shared) bytes, where exclusive bytes are referenced by no other map
    of ``maps``. Also the bytes of the union of the maps whose indices are in ``own``."""
    excl = [0] * len(maps)
    shared = [0] * len(maps)
    owned = set(own)
    union = 0
    keys = sorted({k for vm in maps for k in vm.leaves})
    cs = maps[0].chunk_size if maps else 0
    for key in keys:
        versions: dict[int, tuple[Leaf, list[int]]] = {}
        for i, vm in enumerate(maps):
            leaf = vm.leaves.get(key)
            if leaf is not None:
                versions.setdefault(id(leaf), (leaf, []))[1].append(i)
        counts: Counter = Counter()
        pieces_of = [(_pieces(leaf, key, cs, versions), holders) for leaf, holders in versions.values()]
        for pieces, holders in pieces_of:
            for p in pieces:
                counts[p] += len(holders)
        for pieces, holders in pieces_of:
            for p in pieces:
                n = p[1] - p[0]
                for h in holders:
                    if counts[p] > 1:
                        shared[h] += n
                    else:
                        excl[h] += n
        union += sum(p[1] - p[0] for p in {p for pieces, holders in pieces_of if owned & set(holders)
                                           for p in pieces})
    return list(zip(excl, shared, strict=True)), union


def _pieces(leaf: Leaf, key: int, cs: int, versions: dict[int, tuple[Leaf, list[int]]]) -> list[Piece]:
    """The leaf's data pieces, cut at every boundary any version has in fragmented chunks."""
    out: list[Piece] = []
    cuts: dict[int, set[int]] = {}
    if len(versions) > 1:
        for other, _h in versions.values():
            for chunk, ext in other.overlays.items():
                cuts.setdefault(chunk, set()).update(x for s, e, _l in ext for x in (s, e))
    for chunk, ext in leaf.extents(key, cs):
        if chunk in cuts:
            out.extend(_cut(ext, cuts[chunk]))
        else:
            out.extend(ext)
    return out


def _cut(extents: list[Extent], bounds: set[int]) -> list[Piece]:
    marks = sorted(bounds)
    out = []
    for s, e, loc in extents:
        inner = [m for m in marks if s < m < e]
        edges = [s, *inner, e]
        out.extend((a, b, loc) for a, b in zip(edges, edges[1:], strict=False))
    return out


def changed_ranges(a: VolumeMap, b: VolumeMap) -> list[tuple[int, int]]:
    """Byte ranges whose mapping differs between ``a`` and ``b`` (written or trimmed between
    two snapshots), merged and in order. Leaves both maps share are skipped unread."""
    cs = a.chunk_size
    out: list[tuple[int, int]] = []
    for key in sorted(set(a.leaves) | set(b.leaves)):
        la, lb = a.leaves.get(key), b.leaves.get(key)
        if la is lb:
            continue
        for i in range(LEAF_SLOTS):
            sa = la.slots[i] if la else EMPTY
            sb = lb.slots[i] if lb else EMPTY
            if sa == sb and sa != FRAGMENTED:
                continue
            chunk = (key << LEAF_BITS) | i
            ea = _chunk_extents(la, chunk, cs)
            eb = _chunk_extents(lb, chunk, cs)
            if ea != eb:
                for r in _diff(ea, eb, chunk * cs, (chunk + 1) * cs):
                    if out and out[-1][1] == r[0]:
                        out[-1] = (out[-1][0], r[1])
                    else:
                        out.append(r)
    return out


def _chunk_extents(leaf: Leaf | None, chunk: int, cs: int) -> list[Extent]:
    if leaf is None:
        return []
    slot = leaf.slots[chunk & (LEAF_SLOTS - 1)]
    if slot == EMPTY:
        return []
    if slot == FRAGMENTED:
        return leaf.overlays[chunk]
    return [(chunk * cs, (chunk + 1) * cs, slot)]


def _diff(ea: list[Extent], eb: list[Extent], lo: int, hi: int) -> list[tuple[int, int]]:
    marks = sorted({lo, hi, *(x for s, e, _l in ea + eb for x in (s, e))})
    out: list[tuple[int, int]] = []
    for x, y in zip(marks, marks[1:], strict=False):
        if _loc_at(ea, x) != _loc_at(eb, x):
            if out and out[-1][1] == x:
                out[-1] = (out[-1][0], y)
            else:
                out.append((x, y))
    return out


def _loc_at(extents: list[Extent], x: int) -> int:
    for s, e, loc in extents:
        if s <= x < e:
            return loc
    return EMPTY


def segment_live(leaves_by_key: dict[int, list[Leaf]], chunk_size: int) -> dict[int, int]:
    """Exact live bytes per journal segment: each piece of data counted once, however many leaf
    versions reference it. ``leaves_by_key`` holds the distinct leaves found at each key."""
    from vstor.store.format import loc_segno

    live: dict[int, int] = {}
    for key, leaves in leaves_by_key.items():
        versions = {id(leaf): (leaf, []) for leaf in leaves}
        pieces: set[Piece] = set()
        for leaf in leaves:
            pieces.update(_pieces(leaf, key, chunk_size, versions))  # type: ignore[arg-type]
        for s, e, loc in pieces:
            seg = loc_segno(loc)
            live[seg] = live.get(seg, 0) + e - s
    return live
