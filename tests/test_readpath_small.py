"""The fast path of small reads (vstor/store/reads/small.py): which reads it serves, alone or
as the small pieces of a larger read, that it returns the same bytes as the general path, and
that it never decides an error: damage under it is reported by the general path, with the same
message and count."""

from __future__ import annotations

import os
import time

import pytest
from poolkit import MiB, evict_segments, make_pool, seg_flip
from poolsite import active

from vstor.errors import CorruptData, WouldBlock
from vstor.store.journal.format import FRAME_SIZE, RECORD_HEADER_SIZE, loc_pos, loc_segno
from vstor.store.store import Store

pytestmark = pytest.mark.usefixtures("pool_backend")  # each test on a local and a RADOS pool (tests/poolsite.py)

# (offset, data length) of the records _written makes: a 1 MiB write (version 3, 16 frames with
# block sums), 4 KiB and 1000-byte writes inside it (one frame each, version 2) and an 8 KiB one
# (one frame with block sums).
BIG, SMALL, ODD, EIGHT = (0, MiB), (64 << 10, 4096), (200_000, 1000), (300 << 10, 8192)
RETRY_LIMIT = 5.0  # seconds for the kernel to read what a miss asked for (milliseconds here)


def _written(tmp_path, first: bytes = b"", **opts) -> tuple[str, Store, int, bytearray]:
    """A pool with one 4 MiB volume holding the records above, and ``first`` at 3 MiB written
    before them; the model of the volume's bytes."""
    pool = make_pool(tmp_path, **opts)
    st = Store.open(pool, key_file=str(tmp_path / "key") if opts.get("encrypt") else None)
    vid = st.create_volume("v", 4 * MiB).id
    model = bytearray(4 * MiB)
    st.write(vid, 3 * MiB, first)
    model[3 * MiB : 3 * MiB + len(first)] = first
    for off, n in (BIG, SMALL, ODD, EIGHT):
        data = os.urandom(n)
        st.write(vid, off, data)
        model[off : off + n] = data
    st.sync()
    return pool, st, vid, model


def _fast(st: Store, vid: int, off: int, n: int) -> bytes | None:
    """What the fast path alone returns for [off, off+n), or None where it declines."""
    buf = bytearray(n)
    return bytes(buf) if st._read_small(vid, off, memoryview(buf), False) else None


@pytest.mark.local_only("the fast path serves local pools only; the [rados] variant is the next test")
def test_warm_small_reads_of_every_record_kind_take_the_fast_path(tmp_path):
    _pool, st, vid, model = _written(tmp_path)
    try:
        reads = st.stats.reads
        served = [
            (4096, 4096),  # a block of the 1 MiB record
            (5 * FRAME_SIZE, FRAME_SIZE),  # a whole frame of it, block by block
            SMALL,  # the whole 4 KiB record
            (ODD[0] + 10, 500),  # inside the 1000-byte record: its whole frame read and verified
            EIGHT, (EIGHT[0] + 4096, 4096),  # the 8 KiB record with block sums, whole and its second block
        ]
        for off, n in served:
            assert _fast(st, vid, off, n) == model[off : off + n], (off, n)
        assert st.stats.reads == reads + len(served)  # each counted once, as a read
        declined = [
            (SMALL[0] - 2048, 4096),  # two records
            (4096 + 100, 4096),  # inside the big record but not whole blocks
            (FRAME_SIZE - 4096, 8192),  # two frames of it
            (2 * MiB, 4096),  # a hole
            (4 * MiB - 2048, 4096),  # past the end
        ]
        for off, n in declined:
            assert _fast(st, vid, off, n) is None, (off, n)
        assert st.stats.reads == reads + len(served)  # a declined read counts nothing
        for off, n in served + declined:  # and the public reads agree, whichever path serves them
            end = min(off + n, 4 * MiB)
            assert bytes(st.read(vid, off, n)) == model[off:end]
            assert bytes(st.read(vid, off, n, nowait=True)) == model[off:end]
            buf = bytearray(n)
            assert st.read_into(vid, off, memoryview(buf)) == end - off and buf[: end - off] == model[off:end]
    finally:
        st.close()


@pytest.mark.parametrize("kind", ["lz4", "aes", "remote"])
def test_compressed_encrypted_and_remote_records_take_the_general_path(tmp_path, kind):
    if (kind == "remote") != (active() is not None):
        pytest.skip("the [rados] variant is the remote pool; the [local] one covers lz4 and aes")
    opts = {"lz4": {"compress": "lz4"}, "aes": {"encrypt": True}, "remote": {}}[kind]
    # lz4 shrinks the first record (written first: after many frames it could not shrink, the
    # codec stops trying for a while)
    _pool, st, vid, model = _written(tmp_path, first=b"vstor" * 820, **opts)
    try:
        stored_as_is = kind == "lz4"  # random data is not worth compressing: its frames are stored as is
        for off, n in ((4096, 4096), SMALL, EIGHT):
            assert (_fast(st, vid, off, n) is not None) == stored_as_is
        for off, n in ((4096, 4096), SMALL, EIGHT, (3 * MiB, 4096)):
            assert bytes(st.read(vid, off, n)) == model[off : off + n]
        assert _fast(st, vid, 3 * MiB, 4096) is None
    finally:
        st.close()


def _data_pos(st: Store, vid: int, off: int) -> tuple[int, int]:
    """(segment, position) of the stored byte of volume offset ``off``, in the record that maps
    it, a record whose frames are stored as is."""
    ((_s, _e, loc),) = st.state.maps[vid].lookup(off, off + 1)
    header, _ = st.journal.read_header(loc_segno(loc), loc_pos(loc))
    return loc_segno(loc), loc_pos(loc) + RECORD_HEADER_SIZE + header.table_size + off - header.offset


@pytest.mark.local_only("the damaged bytes are then in the page cache, where the fast path finds them")
@pytest.mark.parametrize("where, match", [
    (SMALL, "frame 0"),  # one frame, no block sums: the frame checksum
    ((EIGHT[0] + 4096, 4096), "block 1"),  # one frame with block sums
    ((5 * 4096, 4096), "block 5"),  # a block of the 1 MiB record
])
def test_damage_under_the_fast_path_is_reported_not_returned(tmp_path, where, match):
    pool, st, vid, model = _written(tmp_path)
    try:
        off, n = where
        segno, pos = _data_pos(st, vid, off + n - 100)
        seg_flip(pool, segno, pos)
        errors = st.stats.read_errors
        assert _fast(st, vid, off, n) is None  # the fast path declines: it never decides an error
        with pytest.raises(CorruptData, match=match):
            st.read(vid, off, n, nowait=True)
        with pytest.raises(CorruptData, match=match):
            st.read_into(vid, off, memoryview(bytearray(n)))
        with pytest.raises(CorruptData, match="checksum mismatch"):  # a piece of a larger read
            st.read_into(vid, 0, memoryview(bytearray(MiB)))
        assert st.stats.read_errors == errors + 3
        assert bytes(st.read(vid, 12 * 4096, 4096)) == model[12 * 4096 : 13 * 4096]  # the rest still reads
    finally:
        st.close()


@pytest.mark.local_only("the page cache of a local segment file")
def test_a_cold_nowait_read_asks_for_its_frame_and_a_retry_takes_the_fast_path(tmp_path):
    pool, st, vid, model = _written(tmp_path)
    other = st.create_volume("w", 8 * MiB).id
    st.write(other, 0, os.urandom(6 * MiB))  # the live segment's mapped tail lies past the records
    st.close()
    st = Store.open(pool)
    try:
        off, n = SMALL
        assert bytes(st.read(vid, off, n)) == model[off : off + n]  # its header is now cached
        evict_segments(pool)
        view = memoryview(bytearray(n))
        with pytest.raises(WouldBlock) as e:
            st._read_small(vid, off, view, True)
        assert e.value.started  # the frame was asked for
        reads, deadline = st.stats.reads, time.monotonic() + RETRY_LIMIT
        while True:
            try:
                if st._read_small(vid, off, view, True):
                    break
            except WouldBlock:
                pass
            assert time.monotonic() < deadline, "the kernel never read what the miss asked for"
            time.sleep(0.001)
        assert view == model[off : off + n] and st.stats.reads == reads + 1
    finally:
        st.close()
