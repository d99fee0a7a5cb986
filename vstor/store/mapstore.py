"""Serialized form of a set of chunk maps (the checkpoint body), keeping sharing. Pure.

A volume and its snapshots share leaf objects (chunkmap.Leaf), and leaf versions share
overlay lists; writing each map out whole would multiply the checkpoint, and the memory
after a restart, by the number of snapshots. So distinct overlay lists are written once,
then distinct leaves once, referring to the lists, and each map is a list of (key, leaf
index) pairs. Layout, all integers little-endian (docs/formats.md, "Map set blob")::

    u32 nlists
    per list:  u32 n | n x (u64 start, u64 end, u64 loc)
    u32 nleaves
    per leaf:  LEAF_SLOTS x u64 slots | u32 noverlays | per overlay: u64 chunk, u32 list index
    u32 nmaps
    per map:   u64 mapped_bytes | u32 nkeys | nkeys x (u64 key, u32 leaf index)

Maps are written in the order of the names the caller gives (stored in the checkpoint's meta).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections import Counter
from collections.abc import Callable

from vstor.errors import FormatError
from vstor.store.chunkmap import FRAGMENTED, LEAF_SLOTS, Leaf, VolumeMap

_U32 = struct.Struct("<I")
_OVL = struct.Struct("<QI")
_EXT = struct.Struct("<QQQ")
_MAPHEAD = struct.Struct("<QI")
_KEYREF = struct.Struct("<QI")


def le_bytes(slots: array) -> bytes:
    if sys.byteorder == "little":
        return slots.tobytes()
    copy = array("Q", slots)
    copy.byteswap()
    return copy.tobytes()


def dump_maps(maps: list[VolumeMap]) -> bytes:
    leaf_index: dict[int, int] = {}
    leaves: list[Leaf] = []
    list_index: dict[int, int] = {}
    lists: list[list] = []
    for vm in maps:
        for leaf in vm.leaves.values():
            if id(leaf) not in leaf_index:
                leaf_index[id(leaf)] = len(leaves)
                leaves.append(leaf)
                for ext in leaf.overlays.values():
                    if id(ext) not in list_index:
                        list_index[id(ext)] = len(lists)
                        lists.append(ext)
    parts = [_U32.pack(len(lists))]
    for ext in lists:
        parts.append(_U32.pack(len(ext)))
        parts.append(b"".join(_EXT.pack(*x) for x in ext))
    parts.append(_U32.pack(len(leaves)))
    for leaf in leaves:
        parts.append(le_bytes(leaf.slots))
        parts.append(_U32.pack(len(leaf.overlays)))
        parts.append(b"".join(_OVL.pack(c, list_index[id(leaf.overlays[c])]) for c in sorted(leaf.overlays)))
    parts.append(_U32.pack(len(maps)))
    for vm in maps:
        parts.append(_MAPHEAD.pack(vm.mapped_bytes, len(vm.leaves)))
        parts.append(b"".join(_KEYREF.pack(k, leaf_index[id(vm.leaves[k])]) for k in sorted(vm.leaves)))
    return b"".join(parts)


def load_maps(data: bytes | memoryview, chunk_size: int, on_ref: Callable[[int, int], None]) -> list[VolumeMap]:
    """Rebuild the maps, sharing leaves and overlay lists as they were. ``on_ref`` is called once
    per extent of each distinct leaf, exactly as the live maps counted them."""
    view = memoryview(data)
    try:
        (nlists,) = _U32.unpack_from(view, 0)
        pos = 4
        lists: list[list] = []
        for _ in range(nlists):
            (n,) = _U32.unpack_from(view, pos)
            pos += 4
            lists.append([_EXT.unpack_from(view, pos + _EXT.size * i) for i in range(n)])
            pos += _EXT.size * n
        (nleaves,) = _U32.unpack_from(view, pos)
        pos += 4
        leaves: list[Leaf] = []
        for _ in range(nleaves):
            slots = array("Q")
            slots.frombytes(view[pos : pos + 8 * LEAF_SLOTS])
            if sys.byteorder != "little":
                slots.byteswap()
            pos += 8 * LEAF_SLOTS
            (novl,) = _U32.unpack_from(view, pos)
            pos += 4
            overlays = {}
            for _ in range(novl):
                chunk, idx = _OVL.unpack_from(view, pos)
                pos += _OVL.size
                overlays[chunk] = lists[idx]
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
    except (struct.error, IndexError, ValueError) as e:
        raise FormatError(f"checkpoint chunk maps are malformed ({e}); the pool metadata is damaged") from None
    if pos != len(view):
        raise FormatError("checkpoint chunk maps have trailing bytes; the pool metadata is damaged")
    # References, counted once per distinct leaf as the live maps count them, aggregated with
    # C-level counting: leaf versions repeat most of their slots and share overlay lists.
    held = [leaf for leaf, key in zip(leaves, keys, strict=True) if key is not None]
    dense: Counter = Counter()
    uses: Counter = Counter()
    for leaf in held:
        dense.update(leaf.slots)
        uses.update(map(id, leaf.overlays.values()))
    for loc, n in dense.items():
        if loc > FRAGMENTED:
            on_ref(loc, n * chunk_size)
    by_id = {id(ext): ext for ext in lists}
    for lid, n in uses.items():
        for s, e, loc in by_id[lid]:
            on_ref(loc, n * (e - s))
    return maps
