"""Space accounting and diffs between chunk maps. Pure logic, no I/O.

Maps of one volume's family (the volume, its snapshots, clones made from them) share leaf
objects, and a leaf object held by one map only is private to it, so most of the work is
comparing leaf identities. Only where several versions of a leaf exist are slots compared.
A piece of data is identified by (chunk, record location) or, in a fragmented chunk, by
(start, end, record location) after cutting every version's extents at the boundaries of
all of them, so two maps share bytes exactly when they reference the same record there.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Sequence
from itertools import chain, compress

from vstor.store.chunkmap import EMPTY, FRAGMENTED, LEAF_BITS, LEAF_SLOTS, Extent, Leaf, VolumeMap
from vstor.store.format import loc_segno
from vstor.store.mapstore import le_bytes


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

    Slots are compared column by column: ``zip(*slots)`` yields one chunk's values across all
    versions, and a chunk where every version agrees (most of them: versions differ only where
    the volume was written between snapshots) costs one C-level ``count``. Elsewhere versions
    are grouped by content, with C-level counting, and only the few distinct contents are
    compared extent by extent. A version held by several maps is shared throughout (``multi``).

    Results: ``excl[j]`` bytes only version j references, and ``union`` the bytes per segment
    of everything the ``own`` versions reference."""

    def __init__(self, key: int, cs: int, leaves: list[Leaf], multi: list[bool], own: list[bool]) -> None:
        n = len(leaves)
        self.excl = [0] * n
        self.union: dict[int, int] = {}
        self.multi, self.own = multi, own
        self.any_own, self.all_own = any(own), all(own)
        alone = n == 1 and not multi[0]
        overlays = [lf.overlays for lf in leaves]
        # All versions' slots side by side; column i (a strided view) holds chunk i of each.
        table = memoryview(b"".join(le_bytes(lf.slots) for lf in leaves)).cast("Q")
        # The same for the identities of their overlay lists (id(None) where a chunk has none),
        # built with C-level calls per version rather than a lookup per version per chunk.
        chunks = range(key << LEAF_BITS, (key + 1) << LEAF_BITS)
        idtable = memoryview(b"".join(array("Q", map(id, map(ov.get, chunks))).tobytes()
                                      for ov in overlays)).cast("Q")
        all_frag = FRAGMENTED.to_bytes(8, "little") * n
        for i in range(LEAF_SLOTS):
            col = table[i::LEAF_SLOTS]
            raw = col.tobytes()
            chunk = (key << LEAF_BITS) | i
            contents = {}
            if raw != all_frag:
                if raw == raw[:8] * n:  # every version agrees: one C-level comparison
                    first = col[0]
                    if first == EMPTY:
                        continue
                    if alone:
                        self.excl[0] += cs
                    if self.any_own:
                        self._add(first, cs)
                    continue
                t = col.tolist()
                for val, (j, cnt) in _first_and_count(t).items():  # whole-chunk and empty contents
                    if val != FRAGMENTED:
                        contents[("slot", val)] = self._content(t, val, j, cnt, None, chunk, cs)
                if FRAGMENTED not in t:
                    self._compare(contents)
                    continue
            # fragmented contents: versions share unchanged overlay lists
            ids = idtable[i::LEAF_SLOTS].tolist()
            for lid, (j, cnt) in _first_and_count(ids).items():
                lst = overlays[j].get(chunk)
                if lst is not None:
                    contents[("list", lid)] = self._content(ids, lid, j, cnt, lst, chunk, cs)
            self._compare(contents)

    def _content(self, tags: list, tag: object, j: int, cnt: int, overlay: list[Extent] | None, chunk: int,
                 cs: int) -> tuple[list[Extent], int | None, bool]:
        """(extents, the version holding it if it is the only one, whether an own version holds
        it) of the content ``tag``, first found in version ``j`` and held by ``cnt`` versions."""
        single = j if cnt == 1 and not self.multi[j] else None
        mine = self.all_own or (self.any_own and any(compress(map(tag.__eq__, tags), self.own)))
        if overlay is not None:
            return overlay, single, mine
        slot = tags[j]
        return ([] if slot == EMPTY else [(chunk * cs, (chunk + 1) * cs, slot)]), single, mine

    def _add(self, loc: int, n: int) -> None:
        seg = loc_segno(loc)
        self.union[seg] = self.union.get(seg, 0) + n

    def _compare(self, contents: dict) -> None:
        """Exclusive and owned bytes of one chunk, over its distinct contents (extent lists).

        Versions of a chunk differ in a few extents and share the rest, so whole extents are
        counted first (C-level): an extent found in two contents, or in a content that several
        versions or maps hold, is shared. Only an extent found once can hold exclusive bytes:
        those that no other content maps to the same record (other contents may cut the same
        record's data at other boundaries)."""
        items = list(contents.values())
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


def _first_and_count(tags: list) -> dict:
    """tag -> (index of its first occurrence, occurrences). C-level counting while the tags
    are few; one pass when they are many, where an index() per tag would be quadratic."""
    counts = Counter(tags)
    if len(counts) <= 16:
        return {tag: (tags.index(tag), cnt) for tag, cnt in counts.items()}
    first: dict = {}
    for j, tag in enumerate(tags):
        first.setdefault(tag, j)
    return {tag: (first[tag], cnt) for tag, cnt in counts.items()}


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
