"""Reads of a volume aged by small overwrites: each record several pieces come from is read
and verified once per request (readpath.py), and that changes neither the bytes returned nor
which damage fails a read."""

from __future__ import annotations

import os
import random
import sys
import threading

import pytest
from poolkit import MiB, make_pool, seg_flip

from vstor.errors import CorruptData
from vstor.store.journal.format import FRAME_SIZE, RECORD_HEADER_SIZE, loc_pos, loc_segno
from vstor.store.reads.path import SPAN_SCRATCH, SPARE_SCRATCH
from vstor.store.store import Store

pytestmark = pytest.mark.usefixtures("pool_backend")  # each test on a local and a RADOS pool (tests/poolsite.py)


@pytest.mark.parametrize("kind", ["plain", "lz4", "aes"])
def test_reads_of_an_aged_volume_match_the_model(tmp_path, kind):
    opts = {"plain": {}, "lz4": {"compress": "lz4"}, "aes": {"encrypt": True}}[kind]
    pool = make_pool(tmp_path, **opts)
    st = Store.open(pool, key_file=str(tmp_path / "key") if kind == "aes" else None)
    size = 4 * MiB
    vid = st.create_volume("v", size).id
    rng = random.Random(7)
    half = bytes(rng.randrange(256) for _ in range(4096)) * 8  # compressible for lz4, not zeros
    model = bytearray()
    for off in range(0, size, MiB):
        data = os.urandom(MiB // 2) + half * 16
        st.write(vid, off, data)
        model += data
    for _ in range(400):
        n = rng.choice([4096, 4096, 8192, 1000])
        off = rng.randrange(0, size - n)
        data = os.urandom(n)
        st.write(vid, off, data)
        model[off : off + n] = data
    st.trim(vid, 3 * MiB + 4096, 20000)
    model[3 * MiB + 4096 : 3 * MiB + 24096] = bytes(20000)
    assert max(len(x) for x in st.state.maps[vid].overlays.values()) > 10  # really aged
    for _ in range(60):
        n = rng.choice([MiB, 128 << 10, 4096, 70000])
        off = rng.randrange(0, size - n)
        assert st.read(vid, off, n) == model[off : off + n]
        buf = bytearray(n)
        assert st.read_into(vid, off, memoryview(buf)) == n and buf == model[off : off + n]
    assert st.read(vid, 0, size) == model
    st.close()


def _record_with_a_hole(tmp_path) -> tuple[str, Store, int, int, bytearray]:
    """A 1 MiB record whose frame 1 is wholly overwritten by a later record: a read of the
    first MiB takes two pieces of it, around the newer one."""
    pool = make_pool(tmp_path)
    st = Store.open(pool)
    vid = st.create_volume("v", 2 * MiB).id
    model = bytearray(os.urandom(MiB))
    st.write(vid, 0, model)
    loc = st.state.maps[vid].lookup(0, 1)[0][2]
    newer = os.urandom(FRAME_SIZE)
    st.write(vid, FRAME_SIZE, newer)
    model[FRAME_SIZE : 2 * FRAME_SIZE] = newer
    pieces = st.state.maps[vid].lookup(0, MiB)
    assert [p[2] for p in pieces].count(loc) == 2
    return pool, st, vid, loc, model


def _frame_byte(st: Store, loc: int, frame: int) -> int:
    header, _ = st.journal.read_header(loc_segno(loc), loc_pos(loc))
    return loc_pos(loc) + RECORD_HEADER_SIZE + header.table_size + frame * FRAME_SIZE + 100


def test_damage_in_overwritten_frames_does_not_fail_a_read_of_live_data(tmp_path):
    pool, st, vid, loc, model = _record_with_a_hole(tmp_path)
    seg_flip(pool, loc_segno(loc), _frame_byte(st, loc, 1))  # frame 1: no live data left
    assert st.read(vid, 0, MiB) == model
    buf = bytearray(MiB)
    st.read_into(vid, 0, memoryview(buf))
    assert buf == model
    assert st.stats.read_errors == 0
    st.close()


def test_damage_in_live_frames_fails_the_read(tmp_path):
    pool, st, vid, loc, model = _record_with_a_hole(tmp_path)
    seg_flip(pool, loc_segno(loc), _frame_byte(st, loc, 3))
    with pytest.raises(CorruptData, match="checksum mismatch in frame 3"):
        st.read(vid, 0, MiB)
    with pytest.raises(CorruptData, match="checksum mismatch in frame 3"):
        st.read_into(vid, 0, memoryview(bytearray(MiB)))
    assert st.read(vid, 0, FRAME_SIZE * 3) == model[: FRAME_SIZE * 3]  # the frames before it
    st.close()


def test_readers_at_once_each_get_their_own_scratch(tmp_path):
    """Spans are read into scratch buffers kept for reuse (path.py ``_fill_spans``): reads
    from several threads at once, 1 MiB and larger, each get their own bytes, and no buffer
    larger than a 1 MiB read's is kept."""
    pool = make_pool(tmp_path)
    st = Store.open(pool)
    size = 8 * MiB
    vid = st.create_volume("v", size).id
    rng = random.Random(3)
    model = bytearray(os.urandom(size))
    for off in range(0, size, MiB):
        st.write(vid, off, model[off : off + MiB])
    for _ in range(600):
        off = rng.randrange(size // 4096) * 4096
        data = os.urandom(4096)
        st.write(vid, off, data)
        model[off : off + 4096] = data
    failed: list[str] = []

    def reader(seed: int) -> None:
        r = random.Random(seed)
        for _ in range(40):
            n = r.choice([MiB, MiB, 3 * MiB])
            off = r.randrange(0, size - n + 1, 4096)
            buf = bytearray(n)
            st.read_into(vid, off, memoryview(buf))
            if buf != model[off : off + n]:
                failed.append(f"reader {seed}: {n} bytes at {off}")

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns inside each read, not only at its system calls
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not failed
    assert st._spare and all(len(b) == SPAN_SCRATCH for b in st._spare) and len(st._spare) <= SPARE_SCRATCH
    st.close()
