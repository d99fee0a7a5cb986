"""A new journal segment file's blocks allocated whole, past its end, when it starts
(journal/tailspace.py): the blocks held and the file's size kept at the tail, the seal and
recovery that free them, a filesystem that refuses, the free-space guard that counts them,
what the store's writes cost the disk, and recovery after a crash. Local pools only (a RADOS
segment has no blocks to allocate)."""

from __future__ import annotations

import os
import random
import textwrap

import poolkit
import pytest
from crashkit import CHILD_PRELUDE, crash, pool_check_passes, reopen_clean, run_killed
from poolkit import MiB, cached_bytes, evict_segments, make_pool, seg_path

from vstor.faults import Faults
from vstor.store.journal.format import SEGMENT_HEADER_SIZE
from vstor.store.journal.tailspace import WINDOW_BYTES
from vstor.store.maintenance.space import SpaceGuard
from vstor.store.store import Store

VOL = 8 * MiB


def _blocks(path: str) -> int:
    """Bytes the filesystem holds for ``path`` (allocated, written or not)."""
    return os.stat(path).st_blocks * 512


def _fill(st: Store, vid: int, rng: random.Random, model: bytearray) -> None:
    """A 1 MiB record and some 4 KiB ones: both ways into the segment (pwritev, the map)."""
    for off, n in [(0, MiB), *((rng.randrange(VOL // 4096) * 4096, 4096) for _ in range(40))]:
        data = rng.randbytes(n)
        st.write(vid, off, data)
        model[off : off + n] = data
    st.sync()


def test_a_new_segment_is_allocated_whole_until_its_seal_cuts_it(tmp_path) -> None:
    pool = make_pool(tmp_path)
    st = Store.open(pool)
    seg_size = st.sb.segment_size
    vid = st.create_volume("v", VOL).id
    model = bytearray(VOL)
    _fill(st, vid, random.Random(1), model)
    path = seg_path(pool, st.journal.current_segno)
    tail = st.journal.segment_bytes(st.journal.current_segno)
    assert _blocks(path) >= seg_size  # held past the end of the file...
    assert os.path.getsize(path) <= tail + WINDOW_BYTES  # ... which stays at the tail (the window's)
    assert st.journal.allocated_ahead() == seg_size - tail
    # Rolling over seals the segment at its last record; the next one is allocated whole too.
    first = st.journal.current_segno
    while st.journal.current_segno == first:
        data = os.urandom(MiB)
        st.write(vid, 2 * MiB, data)
        model[2 * MiB : 3 * MiB] = data
    assert os.path.getsize(path) == st.journal.segment_bytes(first) < seg_size
    assert _blocks(path) < os.path.getsize(path) + MiB  # the held blocks freed at the seal
    assert _blocks(seg_path(pool, st.journal.current_segno)) >= seg_size
    st.close()  # a clean stop seals the live segment
    last = seg_path(pool, first + 1)
    assert os.path.getsize(last) < seg_size and _blocks(last) < os.path.getsize(last) + MiB
    st = Store.open(pool)
    try:
        assert bytes(st.read(vid, 0, VOL)) == model
    finally:
        st.close()


def test_a_filesystem_that_refuses_leaves_the_segment_to_the_window(tmp_path) -> None:
    faults = Faults()
    faults.arm("journal.allocate", "enospc")  # once: the first segment of this open
    pool = make_pool(tmp_path)
    st = Store.open(pool, faults=faults)
    try:
        vid = st.create_volume("v", VOL).id
        model = bytearray(VOL)
        rng = random.Random(2)
        for _ in range(40):
            off = rng.randrange(VOL // 4096) * 4096
            data = rng.randbytes(4096)
            st.write(vid, off, data)
            model[off : off + 4096] = data
        path = seg_path(pool, st.journal.current_segno)
        assert faults.hits("journal.allocate") == 1
        assert os.path.getsize(path) <= SEGMENT_HEADER_SIZE + WINDOW_BYTES  # the window's 4 MiB only
        _fill(st, vid, rng, model)
        assert bytes(st.read(vid, 0, VOL)) == model
        first = st.journal.current_segno
        assert _blocks(path) < st.sb.segment_size // 2
        while st.journal.current_segno == first:  # the next segment is allocated whole again
            st.write(vid, 0, os.urandom(MiB))
        assert _blocks(seg_path(pool, st.journal.current_segno)) >= st.sb.segment_size
    finally:
        st.close()


def test_the_space_allocated_past_the_tail_counts_as_free(tmp_path) -> None:
    """The filesystem's free space already lacks what the live segment holds past its tail:
    the guard adds it back, or host writes would stop a segment early. (Margins of 512 MiB:
    other tests may write to the same filesystem meanwhile.)"""
    free = SpaceGuard(str(tmp_path), reserve=0).free_bytes()
    held = [1 << 30]
    assert not SpaceGuard(str(tmp_path), reserve=0).has_room(free + (512 << 20))
    guard = SpaceGuard(str(tmp_path), reserve=0, held=lambda: held[0])
    assert guard.has_room(free + (512 << 20))
    held[0] = 0  # records filled the space held...
    guard.consumed(1 << 30)  # ... and were counted as they went in
    assert not guard.has_room(free + (512 << 20))  # near the estimate's end: statvfs read again


def test_small_synced_writes_cost_the_disk_about_what_they_write(tmp_path, monkeypatch) -> None:
    """4 KiB records synced every 32 into segments allocated ahead: the disk writes about what
    the journal appends. With the file's size at the segment's end, the window's faults read
    ahead into large folios and every sync wrote them back whole: 10 bytes per byte."""
    monkeypatch.setattr(poolkit, "SEG", 256 * MiB)
    pool = make_pool(tmp_path)
    st = Store.open(pool)
    try:
        vid = st.create_volume("v", 256 * MiB).id
        rng = random.Random(6)
        data = os.urandom(4096)
        st.sync()
        os.sync()
        before = _written_by_me()
        n = 8000
        for i in range(n):
            st.write(vid, rng.randrange(65536) * 4096, data)
            if i % 32 == 31:
                st.sync()
        st.sync()
        assert (_written_by_me() - before) / (n * 4096) < 2.5
    finally:
        st.close()


def _written_by_me() -> int:
    """Bytes this process caused to be written to storage (/proc/self/io write_bytes: pages it
    dirtied, counted when dirtied)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("write_bytes:"))


@pytest.mark.parametrize("segment_mib", [16, 256])
def test_a_crash_loses_nothing_synced_and_recovery_does_not_read_the_space_never_written(
        tmp_path, monkeypatch, segment_mib: int) -> None:
    """kill -9 with the live segment allocated whole: recovery ends at the last record as at
    unwritten space (a clean end, the space cut), and finds the space never written from the
    filesystem's holes instead of reading it (it took 0.6-1.8 s for 250 MiB)."""
    monkeypatch.setattr(poolkit, "SEG", segment_mib * MiB)
    pool = make_pool(tmp_path)
    st = Store.open(pool)
    vid = st.create_volume("v", VOL).id
    model = bytearray(VOL)
    rng = random.Random(3)
    _fill(st, vid, rng, model)
    big = rng.randbytes(4 * MiB)  # a large record last, past the window: the file ends at the tail
    st.write(vid, 4 * MiB, big)
    model[4 * MiB : 8 * MiB] = big
    st.sync()
    segno = st.journal.current_segno
    tail = st.journal.segment_bytes(segno)
    assert os.path.getsize(seg_path(pool, segno)) == tail
    crash(st)
    assert _blocks(seg_path(pool, segno)) >= segment_mib * MiB
    evict_segments(pool)
    pool_check_passes(pool)  # scans the journal as recovery does, and changes nothing
    if segment_mib == 256:  # its reads and their read-ahead stay far below the space never written
        assert cached_bytes(pool) < 96 * MiB

    def same(st: Store) -> None:
        assert bytes(st.read(vid, 0, VOL)) == model

    reopen_clean(pool, same)
    assert os.path.getsize(seg_path(pool, segno)) == tail
    assert _blocks(seg_path(pool, segno)) < tail + MiB  # recovery freed the blocks held past the end
    pool_check_passes(pool)


CHILD = CHILD_PRELUDE + textwrap.dedent("""
    from poolkit import MiB
    vid = st.create_volume("v", 8 * MiB).id
    model = bytearray(8 * MiB)
    rng = random.Random(4)
    arm()
    while True:  # 1 MiB writes, each synced, until the fault kills the process at a segment's start
        off = rng.randrange(8) * MiB
        data = rng.randbytes(MiB)
        st.write(vid, off, data)
        st.sync()
        model[off : off + MiB] = data
        with open(pool + ".tmp", "wb") as f:
            f.write(model)
        os.replace(pool + ".tmp", pool + ".model")
""")


def test_a_crash_while_a_new_segment_is_allocated_loses_nothing_synced(tmp_path) -> None:
    pool = make_pool(tmp_path)
    run_killed(CHILD.format(tests=os.path.dirname(__file__)), pool, "journal.allocate=kill@2")
    with open(pool + ".model", "rb") as f:
        model = f.read()
    st = Store.open(pool)
    try:
        got = bytes(st.read(st.volume("v").id, 0, VOL))
        diff = [i for i in range(0, VOL, MiB) if got[i : i + MiB] != model[i : i + MiB]]
        assert len(diff) <= 1  # at most the write synced as the process died
    finally:
        st.close()
    pool_check_passes(pool)
