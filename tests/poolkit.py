"""Helpers shared by the store unit tests (no FUSE, no root)."""

from __future__ import annotations

import os
import struct
from collections import defaultdict
from collections.abc import Iterable

from vstor.store.journal.format import segment_name
from vstor.store.maps.chunkmap import VolumeMap
from vstor.store.superblock import init_pool

MiB = 1 << 20
SEG = 16 * MiB


def make_pool(tmp_path, **kw) -> str:
    """A fresh pool with 16 MiB segments; an encrypted one gets a key file beside it."""
    pool = str(tmp_path / "pool")
    if kw.get("encrypt"):
        kw.setdefault("key_file", str(tmp_path / "key"))
    init_pool(pool, segment_size=SEG, **kw)
    return pool


def flip_byte(path: str, pos: int) -> None:
    """Corrupt one byte on disk (XOR 0x5A), as bit rot or a bad sector would."""
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x5A]))


def seg_path(pool: str, segno: int) -> str:
    return os.path.join(pool, "journal", segment_name(segno))


class Refs:
    """A chunk map's on_ref callback that collects the deltas per journal segment, as
    PoolState.live does (chunkmap.py: a copy or release reports one total per segment)."""

    def __init__(self) -> None:
        self.total: dict[int, int] = defaultdict(int)
        self.calls = 0

    def __call__(self, loc: int, delta: int) -> None:
        assert loc >= 1 << 32, f"on_ref called with marker value {loc}"
        self.total[loc >> 32] += delta
        self.calls += 1

    def nonzero(self) -> dict[int, int]:
        return {seg: n for seg, n in self.total.items() if n}


def leaf_refs(maps: Iterable[VolumeMap]) -> dict[int, int]:
    """Bytes per segment referenced by every distinct leaf object of ``maps``: what the pool's
    live counts (or a Refs collecting a map's on_ref calls) must hold (chunkmap.py)."""
    out: dict[int, int] = defaultdict(int)
    seen: set[int] = set()
    for vm in maps:
        for key, leaf in vm.leaves.items():
            if id(leaf) in seen:
                continue
            seen.add(id(leaf))
            for _chunk, extents in leaf.extents(key, vm.chunk_size):
                for s, e, loc in extents:
                    out[loc >> 32] += e - s
    return dict(out)


def per_segment(by_loc: dict[int, int]) -> dict[int, int]:
    """Per-location byte counts summed per segment (the form Refs.nonzero() returns)."""
    out: dict[int, int] = defaultdict(int)
    for loc, n in by_loc.items():
        out[loc >> 32] += n
    return {seg: n for seg, n in out.items() if n}


def origins_offset(blob: bytes) -> int:
    """Where the origins section of a map set blob starts (checkpoint version 4)."""
    pos = 4
    (nlists,) = struct.unpack_from("<I", blob, 0)
    for _ in range(nlists):
        (n,) = struct.unpack_from("<I", blob, pos)
        pos += 4 + 24 * n
    (nleaves,) = struct.unpack_from("<I", blob, pos)
    pos += 4
    for _ in range(nleaves):
        pos += 8 * 1024
        (novl,) = struct.unpack_from("<I", blob, pos)
        pos += 4 + 12 * novl
    (nmaps,) = struct.unpack_from("<I", blob, pos)
    pos += 4
    for _ in range(nmaps):
        _mapped, nkeys = struct.unpack_from("<QI", blob, pos)
        pos += 12 + 12 * nkeys
    return pos
