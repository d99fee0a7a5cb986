"""Serialized form of a set of chunk maps (the checkpoint body), keeping sharing. Pure.

A volume and its snapshots share leaf objects (chunkmap.Leaf), and leaf versions share
overlay lists; writing each map out whole would multiply the checkpoint, and the memory
after a restart, by the number of snapshots. So distinct overlay lists are written once,
then distinct leaves once, referring to the lists, and each map is a list of (key, leaf
index) pairs. Layout, all integers little-endian (docs/formats.md, "Map set blob")::

    u32 nlists
    per list:  u32 n | n x (u64 start, u64 end, u64 loc)
    u32 nleaves
    per leaf:  LEAF_SLOTS x u64 slots | u32 noverlays | noverlays x u64 chunk | noverlays x u32 list index
    u32 nmaps
    per map:   u64 mapped_bytes | u32 nkeys | nkeys x (u64 key, u32 leaf index)
    u32 norigins                                        (checkpoint version 4 on)
    per origin: u32 leaf index | u32 parent leaf index | 128 bytes, bit i = slot i may differ

Maps are written in the order of the names the caller gives (stored in the checkpoint's meta).
Origins (Leaf.origin, lineage.py) keep space accounting from deriving every leaf's parent
again after a restart; a blob without them (version 3) loads with none.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections import Counter
from collections.abc import Callable
from itertools import chain

from vstor.errors import FormatError
from vstor.store.maps.chunkmap import FRAGMENTED, LEAF_SLOTS, Leaf, VolumeMap
from vstor.store.maps.lineage import parent_in

_U32 = struct.Struct("<I")
_EXT = struct.Struct("<QQQ")
_MAPHEAD = struct.Struct("<QI")
_KEYREF = struct.Struct("<QI")
_ORIGIN = struct.Struct("<II")
_BITS = LEAF_SLOTS // 8


def le_bytes(slots: array) -> bytes:
    if sys.byteorder == "little":
        return slots.tobytes()
    copy = array("Q", slots)
    copy.byteswap()
    return copy.tobytes()


def dump_maps(maps: list[VolumeMap]) -> bytes:
    """Serialize ``maps``. A checkpoint of 1,000 snapshots writes millions of overlay entries,
    so the per-entry work is done by C-level calls (map, zip, array) rather than Python loops."""
    leaf_index: dict[int, int] = {}
    leaves: list[Leaf] = []
    lists_by_id: dict[int, list] = {}
    for vm in maps:
        for leaf in vm.leaves.values():
            if id(leaf) not in leaf_index:
                leaf_index[id(leaf)] = len(leaves)
                leaves.append(leaf)
                vals = leaf.overlays.values()
                lists_by_id.update(zip(map(id, vals), vals, strict=True))
    list_index = {lid: i for i, lid in enumerate(lists_by_id)}
    parts = [_U32.pack(len(lists_by_id))]
    for ext in lists_by_id.values():
        parts.append(_U32.pack(len(ext)))
        parts.append(le_bytes(array("Q", chain.from_iterable(ext))))
    parts.append(_U32.pack(len(leaves)))
    for leaf in leaves:
        parts.append(le_bytes(leaf.slots))
        chunks = sorted(leaf.overlays)
        parts.append(_U32.pack(len(chunks)))
        parts.append(le_bytes(array("Q", chunks)))
        idx = array("I", map(list_index.__getitem__, map(id, map(leaf.overlays.__getitem__, chunks))))
        parts.append(idx.tobytes() if sys.byteorder == "little" else _swapped(idx))
    parts.append(_U32.pack(len(maps)))
    for vm in maps:
        parts.append(_MAPHEAD.pack(vm.mapped_bytes, len(vm.leaves)))
        parts.append(b"".join(_KEYREF.pack(k, leaf_index[id(vm.leaves[k])]) for k in sorted(vm.leaves)))
    origins = []
    for i, leaf in enumerate(leaves):
        parent, bits = parent_in(leaf, leaf_index)
        if parent >= 0:
            origins.append(_ORIGIN.pack(i, parent) + bits.to_bytes(_BITS, "little"))
    parts.append(_U32.pack(len(origins)))
    parts += origins
    return b"".join(parts)


def _load_origins(view: memoryview, pos: int, leaves: list[Leaf]) -> int:
    (n,) = _U32.unpack_from(view, pos)
    pos += 4
    for _ in range(n):
        i, parent = _ORIGIN.unpack_from(view, pos)
        if i == parent or max(i, parent) >= len(leaves):
            raise ValueError(f"origin {i} -> {parent} names no other leaf")
        bits = int.from_bytes(view[pos + _ORIGIN.size : pos + _ORIGIN.size + _BITS], "little")
        pos += _ORIGIN.size + _BITS
        leaves[i].descend_from(leaves[parent], bits)
    return pos


def _swapped(a: array) -> bytes:
    b = array(a.typecode, a)
    b.byteswap()
    return b.tobytes()


def load_maps(data: bytes | memoryview, chunk_size: int, on_ref: Callable[[int, int], None],
              origins: bool = True) -> list[VolumeMap]:
    """Rebuild the maps, sharing leaves, overlay lists and extents as they were. ``on_ref`` is called once
    per extent of each distinct leaf, exactly as the live maps counted them. ``origins=False``
    reads a blob of checkpoint version 3, which ends after the maps."""
    view = memoryview(data)
    try:
        (nlists,) = _U32.unpack_from(view, 0)
        pos = 4
        lists: list[list] = []
        # Versions of a list repeat most extents; in memory they shared the tuples, and so they
        # do again (a restart would otherwise hold one tuple per extent per list).
        extents: dict[tuple[int, int, int], tuple[int, int, int]] = {}
        for _ in range(nlists):
            (n,) = _U32.unpack_from(view, pos)
            pos += 4
            flat = array("Q")
            flat.frombytes(view[pos : pos + _EXT.size * n])
            if len(flat) != 3 * n:
                raise ValueError("a list runs past the end")
            if sys.byteorder != "little":
                flat.byteswap()
            it = iter(flat)
            ext = list(zip(it, it, it, strict=True))
            lists.append(list(map(extents.setdefault, ext, ext)))
            pos += _EXT.size * n
        (nleaves,) = _U32.unpack_from(view, pos)
        pos += 4
        leaves: list[Leaf] = []
        ints: dict[int, int] = {}  # one int object per chunk number, however many leaves use it
        for _ in range(nleaves):
            slots = array("Q")
            slots.frombytes(view[pos : pos + 8 * LEAF_SLOTS])
            if sys.byteorder != "little":
                slots.byteswap()
            pos += 8 * LEAF_SLOTS
            (novl,) = _U32.unpack_from(view, pos)
            pos += 4
            chunks, idx = array("Q"), array("I")
            chunks.frombytes(view[pos : pos + 8 * novl])
            pos += 8 * novl
            idx.frombytes(view[pos : pos + 4 * novl])
            pos += 4 * novl
            if len(chunks) != novl or len(idx) != novl:
                raise ValueError("an overlay table runs past the end")
            if sys.byteorder != "little":
                chunks.byteswap()
                idx.byteswap()
            chunk_ids = list(chunks)
            overlays = dict(zip(map(ints.setdefault, chunk_ids, chunk_ids), map(lists.__getitem__, idx), strict=True))
            leaf = Leaf(slots, overlays)
            leaf.refs = 0
            leaves.append(leaf)
        (nmaps,) = _U32.unpack_from(view, pos)
        pos += 4
        maps = []
        keys: list[int | None] = [None] * nleaves
        for _ in range(nmaps):
            vm = VolumeMap(chunk_size, on_ref)
            vm.mapped_bytes, nkeys = _MAPHEAD.unpack_from(view, pos)
            pos += _MAPHEAD.size
            for _ in range(nkeys):
                key, idx = _KEYREF.unpack_from(view, pos)
                pos += _KEYREF.size
                leaf = leaves[idx]
                leaf.refs += 1
                keys[idx] = key
                vm.leaves[key] = leaf
            maps.append(vm)
        if origins:
            pos = _load_origins(view, pos, leaves)
    except (struct.error, IndexError, ValueError) as e:
        raise FormatError(f"checkpoint chunk maps are malformed ({e}); the pool metadata is damaged") from None
    if pos != len(view):
        raise FormatError("checkpoint chunk maps have trailing bytes; the pool metadata is damaged")
    # References, counted once per distinct leaf as the live maps count them, aggregated with
    # C-level counting: leaf versions repeat most of their slots and share overlay lists. Each
    # leaf's own per-segment totals are computed when first needed (Leaf.totals).
    held = [leaf for leaf, key in zip(leaves, keys, strict=True) if key is not None]
    dense: Counter = Counter()
    uses: Counter = Counter()
    for leaf in held:
        leaf.segs = None
        dense.update(leaf.slots)
        uses.update(map(id, leaf.overlays.values()))
    for loc, n in dense.items():
        if loc > FRAGMENTED:
            on_ref(loc, n * chunk_size)
    by_id = {id(ext): ext for ext in lists}
    for lid, n in uses.items():
        for start, end, loc in by_id[lid]:
            on_ref(loc, n * (end - start))
    return maps
