"""Block sums (record version 3): a read of a few KiB inside a large record reads and verifies
the 4 KiB blocks that hold it, not the whole 64 KiB frame, and still never returns a byte
that fails a checksum (docs/formats.md, "Block sums")."""

from __future__ import annotations

import os
import pathlib
import random
import shutil
import tempfile
import time

import pytest
import xxhash
from poolkit import MiB, evict_segments, make_pool, seg_flip, seg_path, seg_read, seg_write

from vstor.errors import CorruptData, WouldBlock
from vstor.store import store as store_module
from vstor.store.check import check_pool
from vstor.store.journal.format import (
    BLOCK_SIZE,
    FF_LZ4,
    FF_ZERO,
    FRAME_ENTRY_SIZE,
    FRAME_SIZE,
    REC_WRITE,
    RECORD_HEADER_SIZE,
    RECORD_VERSION,
    SUMS_VERSION,
    BadRecord,
    FrameEntry,
    RecordHeader,
    block_count,
    block_sums,
    loc_pos,
    loc_segno,
    pack_frame_table,
    pack_record_header,
    unpack_record_header,
    verify_header,
)
from vstor.store.store import Store
from vstor.store.superblock import load_superblock

pytestmark = pytest.mark.usefixtures("pool_backend")  # each test on a local and a RADOS pool (tests/poolsite.py)

_NO_NONCE = bytes(12)


def _raw(data: bytes) -> FrameEntry:
    return FrameEntry(len(data), 0, xxhash.xxh3_64_intdigest(data), _NO_NONCE)


@pytest.mark.no_pool("the record format alone")
def test_block_sums_cover_the_blocks_of_frames_stored_as_is_only():
    raw0, raw3 = os.urandom(FRAME_SIZE), os.urandom(5000)  # the last frame: one block and a short one
    entries = [_raw(raw0), FrameEntry(100, FF_LZ4, 1, _NO_NONCE), FrameEntry(0, FF_ZERO, 0, _NO_NONCE), _raw(raw3)]
    length = 3 * FRAME_SIZE + 5000
    sums = block_sums(entries, [raw0, b"x" * 100, raw3], length)
    got = list(memoryview(sums).cast("Q"))
    assert len(got) == block_count(length) == 16 * 3 + 2
    assert got[:16] == [xxhash.xxh3_64_intdigest(raw0[k : k + BLOCK_SIZE]) for k in range(0, FRAME_SIZE, BLOCK_SIZE)]
    assert got[16:48] == [0] * 32  # compressed and zero frames: read whole, never by block
    assert got[48:] == [xxhash.xxh3_64_intdigest(raw3[:BLOCK_SIZE]), xxhash.xxh3_64_intdigest(raw3[BLOCK_SIZE:])]


@pytest.mark.no_pool("the record format alone")
def test_records_without_a_frame_longer_than_a_block_have_no_block_sums():
    small = os.urandom(BLOCK_SIZE)
    assert block_sums([_raw(small)], [small], BLOCK_SIZE) == b""
    assert block_sums([FrameEntry(100, FF_LZ4, 1, _NO_NONCE)] * 2, [b"x" * 100] * 2, 2 * FRAME_SIZE) == b""


@pytest.mark.no_pool("the record format alone")
def test_version_3_header_round_trip_and_bounds():
    data = os.urandom(2 * FRAME_SIZE)
    entries = [_raw(data[:FRAME_SIZE]), _raw(data[FRAME_SIZE:])]
    table = pack_frame_table(entries) + block_sums(entries, [data[:FRAME_SIZE], data[FRAME_SIZE:]], len(data))
    h = RecordHeader(REC_WRITE, 2, 0, 1, 5, 0, len(data), len(table) + len(data), 1, True)
    raw = pack_record_header(h, table, 9)
    assert raw[4] == SUMS_VERSION
    got, hcsum = unpack_record_header(raw)
    assert got == h and got.table_size == len(table) == 2 * FRAME_ENTRY_SIZE + 32 * 8
    verify_header(raw, table, hcsum, 9)
    with pytest.raises(BadRecord, match="checksum"):  # the sums are inside the header checksum
        verify_header(raw, table[:-1] + bytes([table[-1] ^ 1]), hcsum, 9)
    with pytest.raises(BadRecord, match="stored size"):
        unpack_record_header(pack_record_header(h._replace(stored=len(table) - 1), table, 9))
    v2 = h._replace(sums=False, stored=64 + len(data))
    assert unpack_record_header(pack_record_header(v2, table[:64], 9))[0].table_size == 64
    with pytest.raises(ValueError):
        pack_record_header(h, table, None)  # version 1 has no block sums


def _written(tmp_path, **opts) -> tuple[str, Store, int, bytes, int]:
    pool = make_pool(tmp_path, **opts)
    st = Store.open(pool)
    vid = st.create_volume("v", 2 * MiB).id
    data = os.urandom(MiB)
    st.write(vid, 0, data)
    st.sync()
    for _ in range(2):  # later records and commit markers: damage to the first is not a torn tail
        st.write(vid, MiB, os.urandom(BLOCK_SIZE))
        st.sync()
    ((_s, _e, loc),) = st.state.maps[vid].lookup(0, MiB)
    return pool, st, vid, data, loc


def _block_pos(st: Store, loc: int, block: int) -> int:
    header, _ = st.journal.read_header(loc_segno(loc), loc_pos(loc))
    assert header.sums and header.table_size == 16 * FRAME_ENTRY_SIZE + 256 * 8
    return loc_pos(loc) + RECORD_HEADER_SIZE + header.table_size + block * BLOCK_SIZE


def test_a_small_read_verifies_its_blocks_only(tmp_path):
    pool, st, vid, data, loc = _written(tmp_path)
    assert seg_read(pool, loc_segno(loc), loc_pos(loc), 5)[4] == SUMS_VERSION
    seg_flip(pool, loc_segno(loc), _block_pos(st, loc, 37) + 5)  # frame 2, block 5 of it
    st.close()
    st = Store.open(pool)  # nothing cached
    try:
        for off, n in ((36 * BLOCK_SIZE, BLOCK_SIZE), (38 * BLOCK_SIZE + 100, 5000), (32 * BLOCK_SIZE, 5 * BLOCK_SIZE)):
            assert st.read(vid, off, n) == data[off : off + n]  # same frame, other blocks: verified alone
            buf = bytearray(n)
            assert st.read_into(vid, off, memoryview(buf)) == n and buf == data[off : off + n]
            if st.journal.local_files:  # a remote pool is never read without waiting
                assert st.read(vid, off, n, nowait=True) == data[off : off + n]  # cached by now
        for off, n in ((37 * BLOCK_SIZE, BLOCK_SIZE), (36 * BLOCK_SIZE + 4000, 200)):
            with pytest.raises(CorruptData, match="checksum mismatch in block 37 of volume"):
                st.read(vid, off, n)
            with pytest.raises(CorruptData, match="block 37"):
                st.read_into(vid, off, memoryview(bytearray(n)))
        with pytest.raises(CorruptData, match="frame 2"):  # a whole frame: its frame checksum
            st.read(vid, 2 * FRAME_SIZE, FRAME_SIZE)
        assert st.stats.read_errors == 5
    finally:
        st.close()
    rep = check_pool(Store(pool, load_superblock(pool), None))
    assert not rep.clean and any("checksum" in p for p in rep.problems), rep.problems


@pytest.mark.local_only("the page cache of a local segment file")
def test_a_cold_small_read_brings_in_its_frame_and_still_verifies_blocks(tmp_path):
    """A block the page cache misses: the whole frame is read (its neighbours come with it, as
    before block sums), and only the requested blocks are verified; a read that may not wait
    asks for the whole frame and is served from the cache on its retry."""
    pool, st, vid, data, loc = _written(tmp_path)
    seg_flip(pool, loc_segno(loc), _block_pos(st, loc, 37) + 5)
    st.close()
    st = Store.open(pool)
    try:
        evict_segments(pool)
        off = 36 * BLOCK_SIZE
        assert st.read(vid, off, BLOCK_SIZE) == data[off : off + BLOCK_SIZE]  # block 36, frame 2: cold
        segno, frame = loc_segno(loc), _block_pos(st, loc, 32)
        assert _cached(pool, segno, frame, FRAME_SIZE)  # the whole of frame 2 came in
        evict_segments(pool)
        off = 40 * BLOCK_SIZE
        with pytest.raises(WouldBlock):
            st.read(vid, off, BLOCK_SIZE, nowait=True)
        deadline = time.monotonic() + 10
        while not _cached(pool, segno, frame, FRAME_SIZE):
            assert time.monotonic() < deadline, "WILLNEED of the frame never came in"
            time.sleep(0.01)
        assert st.read(vid, off, BLOCK_SIZE, nowait=True) == data[off : off + BLOCK_SIZE]
        with pytest.raises(CorruptData, match="block 37"):
            st.read(vid, 37 * BLOCK_SIZE, BLOCK_SIZE, nowait=True)
    finally:
        st.close()


def _cached(pool: str, segno: int, pos: int, size: int) -> bool:
    """Whether the page cache holds [pos, pos+size) of a local segment file (RWF_NOWAIT)."""
    fd = os.open(seg_path(pool, segno), os.O_RDONLY)
    try:
        return os.preadv(fd, [bytearray(size)], pos, os.RWF_NOWAIT) == size
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_block_sums_that_disagree_with_the_frames_are_damage(tmp_path):
    """Sums rewritten with a valid header checksum (a writer's bug, not bit rot): the frames'
    checksums pass, but the scan refuses the record, so pool check reports it."""
    pool, st, vid, data, loc = _written(tmp_path)
    segno, pos = loc_segno(loc), loc_pos(loc)
    header, _ = st.journal.read_header(segno, pos)
    st.close()
    raw = seg_read(pool, segno, pos, RECORD_HEADER_SIZE + header.table_size)
    table = bytearray(raw[RECORD_HEADER_SIZE:])
    table[16 * FRAME_ENTRY_SIZE + 8 * 7] ^= 1  # block 7's sum
    seg_write(pool, segno, pos, pack_record_header(header, bytes(table), segno) + bytes(table))
    rep = check_pool(Store(pool, load_superblock(pool), None))
    assert not rep.clean and any("block sums do not match" in p for p in rep.problems), rep.problems
    st = Store.open(pool)
    try:
        with pytest.raises(CorruptData, match="block 7"):
            st.read(vid, 7 * BLOCK_SIZE, BLOCK_SIZE)
        assert st.read(vid, 0, FRAME_SIZE) == data[:FRAME_SIZE]  # the frame itself is intact
    finally:
        st.close()


def test_records_of_version_2_are_still_read_by_frames(tmp_path, monkeypatch):
    """Large records written before block sums (version 2): small reads verify whole frames."""
    monkeypatch.setattr(store_module, "block_sums", lambda *a: b"")
    pool, st, vid, data, loc = _written(tmp_path)
    assert seg_read(pool, loc_segno(loc), loc_pos(loc), 5)[4] == RECORD_VERSION
    header, _ = st.journal.read_header(loc_segno(loc), loc_pos(loc))
    frame2 = loc_pos(loc) + RECORD_HEADER_SIZE + header.table_size + 2 * FRAME_SIZE
    st.close()
    monkeypatch.undo()
    seg_flip(pool, loc_segno(loc), frame2 + 5 * BLOCK_SIZE + 5)
    st = Store.open(pool)
    try:
        assert st.read(vid, 0, 2 * FRAME_SIZE) == data[: 2 * FRAME_SIZE]
        with pytest.raises(CorruptData, match="frame 2"):  # block 7 is intact, but only its frame is checked
            st.read(vid, 2 * FRAME_SIZE + 7 * BLOCK_SIZE, BLOCK_SIZE)
        st.write(vid, MiB, data)  # new records get block sums
        assert st.read(vid, MiB + 7 * BLOCK_SIZE, 100) == data[7 * BLOCK_SIZE : 7 * BLOCK_SIZE + 100]
    finally:
        st.close()


@pytest.mark.parametrize("kind", ["lz4", "aes"])
def test_small_reads_of_compressed_and_encrypted_pools(tmp_path, kind):
    """lz4 pools: sums for the frames stored as is, compressed ones read whole; encrypted pools
    store no block sums at all (a sum of plaintext would tell what a block holds)."""
    opts = {"lz4": {"compress": "lz4"}, "aes": {"encrypt": True}}[kind]
    pool = make_pool(tmp_path, **opts)
    st = Store.open(pool, key_file=str(tmp_path / "key") if kind == "aes" else None)
    try:
        vid = st.create_volume("v", MiB).id
        rng = random.Random(3)
        data = b"".join(os.urandom(FRAME_SIZE) if i % 2 else bytes([i + 1]) * FRAME_SIZE for i in range(16))
        st.write(vid, 0, data)
        ((_s, _e, loc),) = st.state.maps[vid].lookup(0, MiB)
        header, frames = st.journal.read_header(loc_segno(loc), loc_pos(loc))
        assert header.sums == (kind == "lz4")
        assert {f.flags for f in frames} == ({0, FF_LZ4} if kind == "lz4" else {2})
        for _ in range(200):
            n = rng.choice([BLOCK_SIZE, 100, 9000])
            off = rng.randrange(0, MiB - n)
            assert st.read(vid, off, n) == data[off : off + n]
    finally:
        st.close()


@pytest.mark.local_only("a local pool on tmpfs")
def test_a_pool_on_tmpfs_reads_blocks_and_never_blocks(tmp_path):
    """tmpfs refuses RWF_NOWAIT (EOPNOTSUPP); its pages are memory, so reads just read."""
    if not os.access("/dev/shm", os.W_OK):
        pytest.skip("no writable /dev/shm")
    base = tempfile.mkdtemp(prefix="vstor-tmpfs-", dir="/dev/shm")
    try:
        _pool, st, vid, data, _loc = _written(pathlib.Path(base))
        try:
            for off, n in ((36 * BLOCK_SIZE, BLOCK_SIZE), (100, 5000), (0, FRAME_SIZE)):
                assert st.read(vid, off, n) == data[off : off + n]
                assert st.read(vid, off, n, nowait=True) == data[off : off + n]
        finally:
            st.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
