"""Helpers shared by the store unit tests (no FUSE, no root)."""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterable

import poolsite

from vstor.store.backend.stub import backend_for
from vstor.store.journal.format import (
    FRAME_SIZE,
    RECORD_HEADER_SIZE,
    loc_pos,
    loc_segno,
    segment_name,
)
from vstor.store.maps.chunkmap import VolumeMap
from vstor.store.superblock import init_pool

MiB = 1 << 20
SEG = 16 * MiB


def make_pool(tmp_path, **kw) -> str:
    """A fresh pool with 16 MiB segments; an encrypted one gets a key file beside it."""
    pool = str(tmp_path / "pool")
    if kw.get("encrypt"):
        kw.setdefault("key_file", str(tmp_path / "key"))
    site = poolsite.active()
    if site is not None:  # the [rados] variant of a test on both backends (tests/poolsite.py)
        return site.make_pool(pool, segment_size=SEG, **kw)
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


def evict_segments(pool: str, settle: float = 2.0) -> None:
    """Drop a local pool's segment pages from the page cache (those not dirty or mapped: sync
    the store first), so that the next reads go to the disk. Pages the kernel is still reading
    in (read-ahead started by an earlier read) cannot be dropped until that read ends, and
    would then be found cached (a DONTNEED just after a WILLNEED left them all, 20 times in 20);
    nor does mincore count them until they are read, so no count can say when they are done.
    So each file is first read whole, once, which waits for every read of it in flight, then
    dropped. The drop is repeated until no page is left, or the count held still over three
    rounds 20 ms apart (pages mapped by a live store stay), or ``settle`` seconds passed."""
    os.sync()
    deadline = time.monotonic() + settle
    counts: list[int] = []
    buf: bytearray | None = bytearray(1 << 20)  # None after the first round: nothing is in flight then
    while True:
        for segno in seg_list(pool):
            fd = os.open(seg_path(pool, segno), os.O_RDONLY)
            try:
                if buf is not None:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # this descriptor reads no further ahead
                    while os.readv(fd, [buf]):  # waits for the pages the kernel is reading in
                        pass
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        buf = None
        counts.append(cached_bytes(pool))
        if not counts[-1] or counts[-3:] == [counts[-1]] * 3 or time.monotonic() > deadline:
            return
        time.sleep(0.02)


def cached_bytes(pool: str) -> int:
    """Bytes of a local pool's segment files in the page cache, by fincore (util-linux: mincore,
    which unlike a probing read never starts a read itself)."""
    paths = [seg_path(pool, n) for n in seg_list(pool)]
    if not paths:  # fincore refuses an empty list
        return 0
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *paths],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(x) for x in out.split())


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident(path: str, pos: int, size: int) -> bool:
    """Whether the page cache holds every page of [pos, pos+size) of a file, by mincore on a
    mapping that is never touched (so, unlike a probing read, it starts no read itself)."""
    start = pos - pos % mmap.PAGESIZE
    length = pos + size - start
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            vec = (ctypes.c_ubyte * -(-length // mmap.PAGESIZE))()
            if _libc.mincore(addr, length, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            return all(v & 1 for v in vec)
        finally:
            _libc.munmap(addr, length)
    finally:
        os.close(fd)


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


# -- a pool's segments and blobs through its backend: the same on a local and a RADOS pool ------
def seg_list(pool: str) -> list[int]:
    with backend_for(pool) as be:
        return be.list_segments()


def seg_size(pool: str, segno: int) -> int:
    """A segment's size in bytes (0 when it does not exist), as os.path.getsize(seg_path(...))."""
    with backend_for(pool) as be:
        return be.segment_size(segno)


def seg_exists(pool: str, segno: int) -> bool:
    with backend_for(pool) as be:
        return segno in be.list_segments()


def seg_read(pool: str, segno: int, pos: int = 0, size: int | None = None) -> bytes:
    """Bytes of a segment from ``pos`` (to its end when ``size`` is None)."""
    with backend_for(pool) as be:
        return be.read_segment(segno, pos, be.segment_size(segno) - pos if size is None else size)


def seg_write(pool: str, segno: int, pos: int, data: bytes) -> None:
    """Write ``data`` into a segment at ``pos`` (past its end appends), durably."""
    with backend_for(pool) as be:
        be.write_segment(segno, pos, data)
        be.flush_segment(segno)


def seg_append(pool: str, segno: int, data: bytes) -> None:
    with backend_for(pool) as be:
        be.write_segment(segno, be.segment_size(segno), data)
        be.flush_segment(segno)


def seg_create(pool: str, segno: int, content: bytes) -> None:
    """A new segment holding ``content`` (which need not be a valid header)."""
    with backend_for(pool) as be:
        be.create_segment(segno, content)


def seg_cut(pool: str, segno: int, size: int) -> None:
    with backend_for(pool) as be:
        be.truncate_segment(segno, size)


def seg_delete(pool: str, segno: int) -> None:
    with backend_for(pool) as be:
        be.delete_segment(segno)


def seg_flip(pool: str, segno: int, pos: int) -> None:
    """flip_byte on a segment, through the pool's backend."""
    with backend_for(pool) as be:
        b = be.read_segment(segno, pos, 1)
        assert len(b) == 1, f"segment {segno} has no byte at {pos}"
        be.write_segment(segno, pos, bytes([b[0] ^ 0x5A]))
        be.flush_segment(segno)


def blob_flip(pool: str, name: str, pos: int) -> None:
    """flip_byte on a blob such as meta/checkpoint.a, through the pool's backend."""
    with backend_for(pool) as be:
        data = bytearray(be.get(name))
        data[pos] ^= 0x5A
        be.put(name, bytes(data))


def blob_delete(pool: str, name: str) -> None:
    with backend_for(pool) as be:
        be.delete(name)


def blob_list(pool: str, prefix: str = "") -> list[str]:
    with backend_for(pool) as be:
        return be.list_blobs(prefix)


def state_flip(pool: str, name: str, pos: int) -> None:
    """flip_byte on a pool's metadata file ``name`` (such as meta/consumers.json): a blob of
    its backend, or a file of the pool's directory while that file is not routed through the
    backend on a RADOS pool (vstor/store/backend/stub.py)."""
    with backend_for(pool) as be:
        routed = be.exists(name)
    if routed:
        blob_flip(pool, name, pos)
    else:
        flip_byte(os.path.join(pool, name), pos)


def frame_on_disk(store, vid: int, frame: int = 0) -> tuple[int, int]:
    """(segment, position) of the stored bytes of volume ``vid``'s frame ``frame`` (its 64 KiB
    at frame * FRAME_SIZE), in the record that maps it now: where to damage it."""
    ((_s, _e, loc),) = store.state.maps[vid].lookup(frame * FRAME_SIZE, frame * FRAME_SIZE + 1)
    segno, pos = loc_segno(loc), loc_pos(loc)
    header, _ = store.journal.read_header(segno, pos)
    first = header.offset // FRAME_SIZE
    return segno, pos + RECORD_HEADER_SIZE + header.table_size + (frame - first) * FRAME_SIZE
