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
from itertools import chain

from vstor.store.journal.format import loc_segno
from vstor.store.maps.chunkmap import EMPTY, FRAGMENTED, LEAF_BITS, LEAF_SLOTS, Extent, Leaf, VolumeMap
from vstor.store.maps.lineage import Lineage


def account(maps: Sequence[VolumeMap], own: Sequence[int] = (),
            want: Sequence[int] | None = None) -> tuple[list[tuple[int, int]], int]:
    """Per map: (exclusive, shared) bytes, where exclusive bytes are referenced by no other map
    of ``maps``. Also the bytes of the union of the maps whose indices are in ``own`` (0 and
    no work for it when ``own`` is empty). With ``want``, only the maps of those indices get
    their exclusive bytes computed; the others show (0, all) and cost less."""
    excl = [0] * len(maps)
    owned = set(own)
    wanted = set(range(len(maps)) if want is None else want)
    union = 0
    cs = maps[0].chunk_size if maps else 0
    for key in sorted({k for vm in maps for k in vm.leaves}):
        holders: dict[int, tuple[Leaf, list[int]]] = {}
        for i, vm in enumerate(maps):
            leaf = vm.leaves.get(key)
            if leaf is not None:
                holders.setdefault(id(leaf), (leaf, []))[1].append(i)
        groups = list(holders.values())
        scan = _KeyScan(key, cs, [leaf for leaf, _h in groups], [len(h) > 1 or h[0] not in wanted for _l, h in groups],
                        [bool(owned.intersection(h)) for _l, h in groups])
        for j, (_leaf, hs) in enumerate(groups):
            if len(hs) == 1:
                excl[hs[0]] += scan.excl[j]
        union += sum(scan.union.values())
    return [(x, vm.mapped_bytes - x) for x, vm in zip(excl, maps, strict=True)], union


class _KeyScan:
    """Sharing among the versions (distinct leaf objects) found at one leaf key.

    Versions descend from one another (lineage.py) and a copy differs from its parent only
    where it was written, so a chunk where no version changed anything holds one content for
    all of them: one lookup. Elsewhere the versions fall into a few groups that share a
    content by descent; the groups' contents are then compared extent by extent. The work is
    O(chunks × roots + changes), not O(chunks × versions). A version held by several maps is
    shared throughout (``multi``).

    Results: ``excl[j]`` bytes only version j references, and ``union`` the bytes per segment
    of everything the ``own`` versions reference."""

    def __init__(self, key: int, cs: int, leaves: list[Leaf], multi: list[bool], own: list[bool]) -> None:
        self.excl = [0] * len(leaves)
        self.union: dict[int, int] = {}
        lineage = Lineage(leaves, own)
        base = key << LEAF_BITS
        for i in range(LEAF_SLOTS):
            chunk = base | i
            comps = lineage.components(i)
            if len(comps) == 1:  # every version holds the same content
                h, cnt, mine = comps[0]
                slot = leaves[h].slots[i]
                if slot == EMPTY:
                    continue
                single = h if cnt == 1 and not multi[h] else None
                if slot != FRAGMENTED:
                    if single is not None:
                        self.excl[h] += cs
                    if mine:
                        self._add(slot, cs)
                    continue
                self._compare([(leaves[h].overlays[chunk], single, mine > 0)])
                continue
            contents: dict[object, list] = {}  # slot value or ("list", id) -> [head, versions, own, extents]
            for h, cnt, mine in comps:
                leaf = leaves[h]
                slot = leaf.slots[i]
                if slot == FRAGMENTED:
                    lst = leaf.overlays[chunk]
                    tag: object = ("list", id(lst))
                else:
                    tag = slot
                    lst = [] if slot == EMPTY else [(chunk * cs, (chunk + 1) * cs, slot)]
                c = contents.get(tag)
                if c is None:
                    contents[tag] = [h, cnt, mine, lst]
                else:
                    c[1] += cnt
                    c[2] += mine
            self._compare([(lst, h if cnt == 1 and not multi[h] else None, mine > 0)
                           for h, cnt, mine, lst in contents.values()])

    def _add(self, loc: int, n: int) -> None:
        seg = loc_segno(loc)
        self.union[seg] = self.union.get(seg, 0) + n

    def _compare(self, items: list[tuple[list[Extent], int | None, bool]]) -> None:
        """Exclusive and owned bytes of one chunk, over its distinct contents (extent lists).

        Versions of a chunk differ in a few extents and share the rest, so whole extents are
        counted first (C-level): an extent found in two contents, or in a content that several
        versions or maps hold, is shared. Only an extent found once can hold exclusive bytes:
        those that no other content maps to the same record (other contents may cut the same
        record's data at other boundaries)."""
        counts: Counter = Counter()
        if any(single is not None for _e, single, _m in items):  # else nothing can be exclusive
            for ext, single, _mine in items:
                counts.update(ext)
                if single is None:
                    counts.update(ext)
        unique = {t for t, n in counts.items() if n == 1}
        if unique:
            same_loc: dict[int, list[tuple[int, int]]] = {}
            locs = {t[2] for t in unique}
            for ext, _single, _mine in items:
                for s, e, loc in ext:
                    if loc in locs:
                        same_loc.setdefault(loc, []).append((s, e))
            solo = {loc: _solo_prefix(spans) for loc, spans in same_loc.items()}
            for ext, single, _mine in items:
                if single is None:
                    continue
                for t in ext:
                    if t in unique:  # its bytes that no other piece of the same record covers
                        s, e, loc = t
                        prefix = solo[loc]
                        self.excl[single] += prefix[e] - prefix[s]
        if any(mine for _e, _s, mine in items):
            by_loc: dict[int, list[tuple[int, int]]] = {}
            for s, e, loc in set(chain.from_iterable(ext for ext, _s, mine in items if mine)):
                by_loc.setdefault(loc, []).append((s, e))
            union = self.union
            for loc, spans in by_loc.items():  # one span per record in most chunks
                n = spans[0][1] - spans[0][0] if len(spans) == 1 else _covered(-1, 1 << 62, spans)
                seg = loc_segno(loc)
                union[seg] = union.get(seg, 0) + n


def _solo_prefix(spans: list[tuple[int, int]]) -> dict[int, int]:
    """For the pieces ``spans`` of one record (with repeats): at each boundary, the bytes before
    it that exactly one piece covers. A piece found once then owns prefix[e] - prefix[s] bytes
    alone: one sweep per record instead of a union per piece."""
    delta: dict[int, int] = {}
    for s, e in spans:
        delta[s] = delta.get(s, 0) + 1
        delta[e] = delta.get(e, 0) - 1
    points = sorted(delta)
    prefix = {points[0]: 0}
    cov = acc = 0
    for a, b in zip(points, points[1:], strict=False):
        cov += delta[a]
        if cov == 1:
            acc += b - a
        prefix[b] = acc
    return prefix


def _covered(s: int, e: int, spans: list[tuple[int, int]]) -> int:
    """Bytes of [s, e) that the union of ``spans`` covers."""
    total, at = 0, s
    for a, b in sorted(spans):
        a, b = max(a, at), min(b, e)
        if b > a:
            total += b - a
            at = b
    return total


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
    live: dict[int, int] = {}
    for key, leaves in leaves_by_key.items():
        scan = _KeyScan(key, chunk_size, leaves, [True] * len(leaves), [True] * len(leaves))
        for seg, n in scan.union.items():
            live[seg] = live.get(seg, 0) + n
    return live
