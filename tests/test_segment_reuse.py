"""Dead segment files reused for later segments (vstor/store/backend/spares.py): the records
a reused file still holds from its earlier segment are never taken for the new one's, after
a crash too; damage inside durable data is still reported; a crash while a spare becomes a
segment leaves a pool that opens; spares give their space back when the pool runs short; a
dead file not kept is removed after the store lets its lock go, and one a crash left moved
aside is removed later. Local pools only: a RADOS pool deletes its segments' objects."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest
from crashkit import crash, reopen_clean
from poolkit import MiB, evict_segments, make_pool, seg_flip

from vstor.errors import CorruptData, PoolFull, VstorError
from vstor.faults import Faults
from vstor.store.backend.spares import DEAD_SUFFIX, SPARE_SUFFIX, SpareSegments
from vstor.store.journal.format import (
    SEG_REUSED,
    SEG_SEEDED,
    SEGMENT_HEADER_SIZE,
    loc_pos,
    loc_segno,
    pack_segment_header,
    segment_flags,
    segment_name,
)
from vstor.store.journal.writer import REUSED_AHEAD
from vstor.store.store import Store

VOL = 24 * MiB  # more than one 16 MiB segment of the test pools


def _fill(st: Store, vid: int, rng: random.Random, model: bytearray, n: int, size: int) -> None:
    for _ in range(n):
        off = rng.randrange(VOL // size) * size
        data = rng.randbytes(size)
        st.write(vid, off, data)
        model[off : off + size] = data


def _check(st: Store, vid: int, model: bytearray) -> None:
    for off in range(0, VOL, MiB):
        assert bytes(st.read(vid, off, MiB)) == model[off : off + MiB], f"MiB at {off}"


def _spares(pool: str) -> list[str]:
    d = os.path.join(pool, "journal", "spare")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def _overwrite(st: Store, vid: int, rng: random.Random, model: bytearray, times: int) -> None:
    """Write the whole volume over ``times`` times, in order, 1 MiB at a time."""
    for _ in range(times):
        for off in range(0, VOL, MiB):
            data = rng.randbytes(MiB)
            st.write(vid, off, data)
            model[off : off + MiB] = data


def _make_spares(st: Store, vid: int, rng: random.Random, model: bytearray) -> None:
    """Write the volume over twice, so the first segments die, and checkpoint twice so that
    they are deleted (kept as spares)."""
    _overwrite(st, vid, rng, model, 2)
    st.checkpoint()
    st.checkpoint()


def _header(pool: str, segno: int) -> bytes:
    with open(os.path.join(pool, "journal", segment_name(segno)), "rb") as f:
        return f.read(SEGMENT_HEADER_SIZE)


def _crash_and_check(st: Store, pool: str, vid: int, model: bytearray) -> None:
    """Crash ``st``, open the pool again: a clean end (no torn tail), every block its newest version."""
    crash(st)
    reopen_clean(pool, lambda st: _check(st, vid, model))


def _pool_with_spares(tmp_path, seed: int,
                      faults: Faults | None = None) -> tuple[str, Store, int, random.Random, bytearray]:
    """A pool whose first segments died and were kept as spares; its store, volume, and model."""
    pool = make_pool(tmp_path)
    rng, model = random.Random(seed), bytearray(VOL)
    st = Store.open(pool, faults=faults or Faults())  # its own Faults: never arm the shared NO_FAULTS
    vid = st.create_volume("v", VOL).id
    _make_spares(st, vid, rng, model)
    return pool, st, vid, rng, model


def _next_segment(st: Store, vid: int, rng: random.Random, model: bytearray) -> int:
    """Write until the journal rolls over; the new segment's number."""
    first = st.journal.current_segno
    while st.journal.current_segno == first:
        _fill(st, vid, rng, model, 1, MiB)
    return st.journal.current_segno


def test_a_dead_segment_file_is_kept_and_reused_for_a_later_segment(tmp_path):
    pool, st, vid, rng, model = _pool_with_spares(tmp_path, 1)
    kept = _spares(pool)
    assert kept and all(n.endswith(SPARE_SUFFIX) for n in kept)
    assert st.usage()["spare_segments"] == len(kept)
    head = _header(pool, _next_segment(st, vid, rng, model))
    assert segment_flags(head) & SEG_REUSED and segment_flags(head) & SEG_SEEDED
    assert len(_spares(pool)) == len(kept) - 1
    _fill(st, vid, rng, model, 300, 4096)
    st.sync()
    _check(st, vid, model)
    st.close()
    st = Store.open(pool)
    _check(st, vid, model)
    st.close()


@pytest.mark.parametrize("synced", [True, False])
def test_an_earlier_use_of_a_reused_file_is_never_replayed_after_a_crash(tmp_path, synced):
    """The reused file holds whole, checksummed records of its earlier segment -- older
    versions of the same volume blocks -- right after the new tail. Recovery ends the scan
    there, as a clean end (no torn tail), and every block reads its newest version."""
    pool, st, vid, rng, model = _pool_with_spares(tmp_path, 2)
    reused = _next_segment(st, vid, rng, model)
    assert segment_flags(_header(pool, reused)) & SEG_REUSED
    _fill(st, vid, rng, model, 50, 4096)  # a short new tail: the old records lie beyond it
    if synced:
        st.sync()
    tail = st.journal.tail()
    assert tail[0] == reused and os.path.getsize(os.path.join(pool, "journal", segment_name(reused))) > tail[1]
    _crash_and_check(st, pool, vid, model)


def test_damage_inside_durable_data_of_a_reused_segment_is_reported(tmp_path):
    pool, st, vid, rng, model = _pool_with_spares(tmp_path, 3)
    _next_segment(st, vid, rng, model)
    st.write(vid, 0, rng.randbytes(256 * 1024))
    loc = st.state.maps[vid].lookup(0, 1)[0][2]
    st.sync()
    st.write(vid, MiB, rng.randbytes(4096))  # carries a commit marker covering the write above
    assert segment_flags(_header(pool, loc_segno(loc))) & SEG_REUSED
    crash(st)
    seg_flip(pool, loc_segno(loc), loc_pos(loc) + 64 + 32 + 1000)
    with pytest.raises(CorruptData, match="durable"):
        Store.open(pool)


def test_a_crash_while_a_spare_becomes_a_segment_leaves_a_pool_that_opens(tmp_path):
    faults = Faults()
    pool, st, vid, rng, model = _pool_with_spares(tmp_path, 4, faults)
    st.sync()
    kept = _spares(pool)
    assert kept
    faults.arm("spares.take", "eio")  # after the new header, before the link
    with pytest.raises(VstorError):
        for _ in range(64):
            _fill(st, vid, rng, model, 1, MiB)  # the failing write raises before the model has it
    crash(st)
    assert _spares(pool) == kept  # the spare keeps its file, with the header of a segment never made
    st = Store.open(pool)
    try:
        _check(st, vid, model)  # every write that returned: the page cache kept them
        # the segment recovery started took the oldest spare, the one that failed before
        assert segment_flags(_header(pool, st.journal.current_segno)) & SEG_REUSED
        assert _spares(pool) == kept[1:]
    finally:
        st.close()


def test_spares_give_their_space_back_when_the_pool_runs_short(tmp_path):
    pool, st, _vid, _rng, _model = _pool_with_spares(tmp_path, 5)
    assert _spares(pool)
    with pytest.raises(PoolFull):
        st._ensure_room(1 << 60)
    assert _spares(pool) == [] and st.usage()["spare_segments"] == 0
    st.close()


def _segment_file(path: str, segno: int, seeded: bool, size: int = 2 * MiB) -> None:
    with open(path, "wb") as f:
        f.write(pack_segment_header(b"u" * 16, segno, 1, seeded=seeded))
        f.truncate(size)


def test_only_seeded_segments_of_a_useful_size_are_kept_and_at_most_the_limit(tmp_path):
    jdir = tmp_path / "journal"
    jdir.mkdir()
    spares = SpareSegments(str(jdir), limit=2)
    old = str(jdir / segment_name(1))
    _segment_file(old, 1, seeded=False)  # version 1 records: their file must never be reused
    assert not spares.keep(old, 1) and not os.path.exists(old)
    damaged = str(jdir / segment_name(6))
    _segment_file(damaged, 6, seeded=True)
    with open(damaged, "r+b") as f:  # a damaged header is not trusted to say SEG_SEEDED
        f.seek(30)
        f.write(b"\xff")
    assert not spares.keep(damaged, 6) and not os.path.exists(damaged)
    small = str(jdir / segment_name(2))
    _segment_file(small, 2, seeded=True, size=SEGMENT_HEADER_SIZE + 100)
    assert not spares.keep(small, 2) and not os.path.exists(small)
    for n in (3, 4, 5):
        path = str(jdir / segment_name(n))
        _segment_file(path, n, seeded=True)
        assert spares.keep(path, n) == (n < 5)
        assert not os.path.exists(path)
    assert spares.summary() == (2, 4 * MiB)
    assert SpareSegments(str(jdir), limit=0).keep(str(jdir / "missing.seg"), 9) is False
    # The ones not kept were moved aside, to be removed without the store's lock.
    spare_dir = jdir / "spare"
    assert sorted(n for n in os.listdir(spare_dir) if n.endswith(DEAD_SUFFIX)) == [
        f"{n:010d}{DEAD_SUFFIX}" for n in (1, 2, 5, 6)]
    assert spares.purge() == 4 and spares.purge() == 0
    assert sorted(os.listdir(spare_dir)) == [f"{n:010d}{SPARE_SUFFIX}" for n in (3, 4)]
    assert spares.summary() == (2, 4 * MiB)


def _one_spare(tmp_path) -> tuple[Path, SpareSegments]:
    """A journal directory whose segment 3 was kept as its one spare."""
    jdir = tmp_path / "journal"
    jdir.mkdir()
    spares = SpareSegments(str(jdir))
    path = str(jdir / segment_name(3))
    _segment_file(path, 3, seeded=True)
    assert spares.keep(path, 3)
    return jdir, spares


def test_a_spare_name_left_beside_the_segment_it_became_is_dropped(tmp_path):
    """After a crash between take()'s link and its unlink, the spare name is not a spare; the
    next take drops it. Listing and counting (every statfs and status) change nothing: run
    while a take is between those two steps, a removal there would fail the take's unlink."""
    jdir, spares = _one_spare(tmp_path)
    (name,) = spares.names()
    spare, new = os.path.join(spares.dir, name), str(jdir / segment_name(7))
    os.link(spare, new)  # a crash (or a take in progress) between take()'s link and its unlink
    assert spares.names() == [] and spares.summary() == (0, 0)
    assert os.path.exists(spare) and os.path.exists(new)  # the queries removed nothing
    assert not spares.take(str(jdir / segment_name(8)), pack_segment_header(b"u" * 16, 8, 1))
    assert not os.path.exists(spare) and os.path.exists(new)


def test_taking_a_spare_never_replaces_an_existing_segment(tmp_path):
    jdir, spares = _one_spare(tmp_path)
    taken = str(jdir / segment_name(4))
    _segment_file(taken, 4, seeded=True)
    with pytest.raises(FileExistsError):
        spares.take(taken, pack_segment_header(b"u" * 16, 4, 1))
    assert spares.summary()[0] == 1



def test_a_segment_created_without_a_header_never_takes_a_spare(tmp_path):
    """pool migrate copies an empty segment as create_segment(segno, b""): a new, empty file."""
    from vstor.store.backend.local import LocalBackend

    jdir, _spares_of = _one_spare(tmp_path)
    be = LocalBackend(str(tmp_path))
    be.create_segment(9, b"")
    assert be.segment_size(9) == 0 and be.spare_segments()[0] == 1
    be.close()


def _mapped(path: str) -> bool:
    """Whether this process maps ``path`` (/proc/self/maps)."""
    with open("/proc/self/maps") as f:
        return any(line.rstrip("\n").endswith(" " + path) for line in f)


def test_small_records_reach_a_reused_file_by_pwrite_and_a_new_one_through_the_map(tmp_path):
    """A store into a mapped page of a file whose blocks are written dirties its whole folio,
    and each fdatasync wrote the folio around the tail back again (+15% of device writes,
    benchmarks.md section 12): small records go to a reused file with pwrite. A new file's
    blocks are unwritten, and there the mapped window is the faster path."""
    pool, st, vid, rng, model = _pool_with_spares(tmp_path, 9)
    seg_path = os.path.join(pool, "journal", segment_name(st.journal.current_segno))
    assert not segment_flags(_header(pool, st.journal.current_segno)) & SEG_REUSED
    _fill(st, vid, rng, model, 20, 4096)
    assert _mapped(seg_path)  # a new segment: small records through the window
    reused = _next_segment(st, vid, rng, model)
    seg_path = os.path.join(pool, "journal", segment_name(reused))
    assert segment_flags(_header(pool, reused)) & SEG_REUSED
    for _ in range(200):
        _fill(st, vid, rng, model, 1, 4096)
        assert not _mapped(seg_path)
    st.sync()
    assert st.journal.current_segno == reused
    _check(st, vid, model)
    _crash_and_check(st, pool, vid, model)


def _read_bytes() -> int:
    """Bytes this process has had read from storage (/proc/self/io; read-ahead it asked for included)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("read_bytes:"))


def test_only_small_records_read_a_reused_files_old_contents_ahead(tmp_path):
    """A pwrite into a page that is not cached reads it first, so small records ask for the
    reused file's pages ahead of the tail. A large record covers its pages but the last: reading
    ahead of 1 MiB records read 28 MiB from the disk per 64 MiB written (benchmarks.md §12)."""
    pool, st, vid, rng, model = _pool_with_spares(tmp_path, 11)
    reused = _next_segment(st, vid, rng, model)
    assert segment_flags(_header(pool, reused)) & SEG_REUSED
    st.sync()
    evict_segments(pool)  # the reused file's old contents are on the disk only
    before = _read_bytes()
    _fill(st, vid, rng, model, 8, MiB)
    assert st.journal.current_segno == reused
    assert _read_bytes() - before <= 8 * 2 * 4096  # at most the partial pages at the records' ends
    before = _read_bytes()
    _fill(st, vid, rng, model, 16, 4096)
    assert _read_bytes() - before >= REUSED_AHEAD // 2  # the small ones read ahead
    st.sync()
    _check(st, vid, model)
    st.close()


def _dead(pool: str) -> list[str]:
    return [n for n in _spares(pool) if n.endswith(DEAD_SUFFIX)]


def _dying_segments(tmp_path, faults: Faults) -> tuple[str, Store, int, bytearray]:
    """A pool with two spares whose next checkpoint deletes three more dead segments (the
    volume written over three times since the one before): their files are not kept."""
    pool, st, vid, rng, model = _pool_with_spares(tmp_path, 6, faults)
    _overwrite(st, vid, rng, model, 3)
    st.checkpoint()
    assert len(_spares(pool)) == 2 and not _dead(pool)
    return pool, st, vid, model


def test_dead_segment_files_are_removed_after_the_store_lets_its_lock_go(tmp_path):
    faults = Faults()
    pool, st, vid, model = _dying_segments(tmp_path, faults)
    try:
        faults.arm("spares.purge", "delay", repeat=True)  # each removal waits 0.5 s first
        ckpt = threading.Thread(target=st.checkpoint)
        ckpt.start()
        deadline = time.monotonic() + 10
        while not _dead(pool):
            assert time.monotonic() < deadline, "no dead segment file was moved aside"
            time.sleep(0.005)
        started = time.monotonic()
        data = os.urandom(MiB)
        st.write(vid, 0, data)  # host requests do not wait for the removals
        model[:MiB] = data
        assert bytes(st.read(vid, 0, MiB)) == data
        assert time.monotonic() - started < faults.delay
        assert _dead(pool), "the removals were over before the write: they held it up"
        ckpt.join()
        assert not _dead(pool)
        assert st.stats.as_dict()["segments_deleted"] >= 3
        _check(st, vid, model)
    finally:
        faults.disarm()
        st.close()


def test_a_crash_with_a_dead_segment_file_moved_aside_leaves_a_pool_that_opens(tmp_path):
    faults = Faults()
    pool, st, vid, model = _dying_segments(tmp_path, faults)
    listed = st.journal.segments()
    faults.arm("spares.keep", "eio")  # after the first dead file is moved aside, before the rest
    with pytest.raises(OSError):
        st.checkpoint()
    crash(st)
    assert len(_dead(pool)) == 1
    st = Store.open(pool)
    try:
        assert st.recovery["torn_tail"] is None
        assert listed[0] not in st.journal.segments()  # unlisted for good
        _check(st, vid, model)
        st.checkpoint()  # the next checkpoint removes what the crash left
        assert not _dead(pool)
    finally:
        st.close()


def test_a_dead_segment_file_that_cannot_be_removed_fails_nothing_and_goes_later(tmp_path):
    faults = Faults()
    pool, st, vid, model = _dying_segments(tmp_path, faults)
    try:
        faults.arm("spares.purge", "eio")  # the first removal fails
        st.checkpoint()  # written, and the segments unlisted: the failure is only logged
        assert len(_dead(pool)) == 1
        _check(st, vid, model)
        st.checkpoint()
        assert not _dead(pool)
    finally:
        st.close()
