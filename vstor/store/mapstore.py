"""Serialized form of a set of chunk maps (the checkpoint body), keeping leaf sharing. Pure.

A volume and its snapshots share leaf objects (chunkmap.Leaf); writing each map out whole
would multiply the checkpoint, and the memory after a restart, by the number of snapshots.
So distinct leaves are written once, in a leaf table, and each map is a list of
(key, leaf index) pairs. Layout, all integers little-endian (docs/formats.md, "Checkpoint")::

    u32 nleaves
    per leaf:  LEAF_SLOTS x u64 slots | u32 noverlays | per overlay: u64 chunk, u32 n, n x (u64 start, u64 end, u64 loc)
    u32 nmaps
    per map:   u64 mapped_bytes | u32 nkeys | nkeys x (u64 key, u32 leaf index)

Maps are written in the order of the names the caller gives (stored in the checkpoint's meta).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable

from vstor.errors import FormatError
from vstor.store.chunkmap import LEAF_SLOTS, Leaf, VolumeMap

_U32 = struct.Struct("<I")
_OVL = struct.Struct("<QI")
_EXT = struct.Struct("<QQQ")
_MAPHEAD = struct.Struct("<QI")
_KEYREF = struct.Struct("<QI")


def _le(slots: array) -> bytes:
    if sys.byteorder == "little":
        return slots.tobytes()
    copy = array("Q", slots)
    copy.byteswap()
    return copy.tobytes()


def dump_maps(maps: list[VolumeMap]) -> bytes:
    index: dict[int, int] = {}
    leaves: list[Leaf] = []
    for vm in maps:
        for leaf in vm.leaves.values():
            if id(leaf) not in index:
                index[id(leaf)] = len(leaves)
                leaves.append(leaf)
    parts = [_U32.pack(len(leaves))]
    for leaf in leaves:
        parts.append(_le(leaf.slots))
        parts.append(_U32.pack(len(leaf.overlays)))
        for chunk in sorted(leaf.overlays):
            ext = leaf.overlays[chunk]
            parts.append(_OVL.pack(chunk, len(ext)))
            parts.append(b"".join(_EXT.pack(*x) for x in ext))
    parts.append(_U32.pack(len(maps)))
    for vm in maps:
        parts.append(_MAPHEAD.pack(vm.mapped_bytes, len(vm.leaves)))
        parts.append(b"".join(_KEYREF.pack(k, index[id(vm.leaves[k])]) for k in sorted(vm.leaves)))
    return b"".join(parts)


def load_maps(data: bytes | memoryview, chunk_size: int, on_ref: Callable[[int, int], None]) -> list[VolumeMap]:
    """Rebuild the maps. ``on_ref`` is called once per extent of each distinct leaf, exactly as
    the live maps counted them."""
    view = memoryview(data)
    try:
        (nleaves,) = _U32.unpack_from(view, 0)
        pos = 4
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
                chunk, n = _OVL.unpack_from(view, pos)
                pos += _OVL.size
                overlays[chunk] = [_EXT.unpack_from(view, pos + _EXT.size * i) for i in range(n)]
                pos += _EXT.size * n
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
    for leaf, key in zip(leaves, keys, strict=True):
        if key is None:
            continue  # no map holds it (never written so)
        for _chunk, extents in leaf.extents(key, chunk_size):
            for s, e, loc in extents:
                on_ref(loc, e - s)
    return maps
