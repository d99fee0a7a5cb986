"""Commit markers: recovery tells a torn tail from damage inside durable data; GC measures
a segment's live share in logical bytes, so compressed segments are reclaimed too."""

from __future__ import annotations

import os

import pytest
from poolkit import MiB, make_pool, seg_flip, seg_read

from vstor.errors import CorruptData
from vstor.store.journal.format import REC_COMMIT, loc_pos, loc_segno
from vstor.store.maintenance.reclaim import Reclaimer
from vstor.store.store import Store

pytestmark = pytest.mark.usefixtures("pool_backend")  # each test on a local and a RADOS pool (tests/poolsite.py)


def _loc_of(store: Store, vid: int, offset: int) -> int:
    return store.state.maps[vid].lookup(offset, offset + 1)[0][2]


def test_damage_before_a_commit_marker_is_corruption_not_a_torn_tail(tmp_path):
    pool = make_pool(tmp_path)
    st = Store.open(pool)
    v = st.create_volume("a", 64 * MiB)
    st.write(v.id, 0, os.urandom(256 * 1024))
    st.sync()
    st.write(v.id, MiB, os.urandom(256 * 1024))  # carries a marker covering the first write
    st.sync()
    st.write(v.id, 2 * MiB, os.urandom(256 * 1024))  # and a marker covering the second
    first = _loc_of(st, v.id, 0)
    st.journal.close()
    seg_flip(pool, loc_segno(first), loc_pos(first) + 64 + 32 + 1000)
    with pytest.raises(CorruptData, match="durable"):
        Store.open(pool)


@pytest.mark.parametrize("marked", [True, False])
def test_an_idle_journal_marks_its_newest_durable_records(tmp_path, marked):
    """The last synced write has no later write to carry a marker for it: the maintenance
    tick writes one, and damage to that write is then corruption, not a torn tail."""
    from vstor.store.maintenance.reclaim import Reclaimer

    pool = make_pool(tmp_path)
    st = Store.open(pool)
    v = st.create_volume("a", 64 * MiB)
    st.write(v.id, 0, os.urandom(256 * 1024))
    st.sync()
    loc = _loc_of(st, v.id, 0)
    if marked:
        Reclaimer(st).tick()  # idle after the sync: the commit step marks
        assert not st.mark_durable()  # once: the marker itself needs none
        assert not st.journal.dirty()
    st.journal.close()  # a crash
    seg_flip(pool, loc_segno(loc), loc_pos(loc) + 64 + 32 + 1000)
    if marked:
        with pytest.raises(CorruptData, match="durable"):
            Store.open(pool)
    else:  # indistinguishable from a write the crash tore: cut, and reported as a torn tail
        st = Store.open(pool)
        assert st.recovery["torn_tail"]["offset"] == loc_pos(loc)
        st.close()


def test_damage_after_the_last_marker_is_a_torn_tail(tmp_path):
    pool = make_pool(tmp_path)
    st = Store.open(pool)
    v = st.create_volume("a", 64 * MiB)
    keep = os.urandom(256 * 1024)
    st.write(v.id, 0, keep)
    st.sync()
    st.write(v.id, MiB, os.urandom(256 * 1024))  # not synced: may be lost
    last = _loc_of(st, v.id, MiB)
    st.journal.close()
    seg_flip(pool, loc_segno(last), loc_pos(last) + 64 + 32 + 1000)
    st2 = Store.open(pool)
    assert st2.recovery["torn_tail"] is not None
    assert st2.read(v.id, 0, len(keep)) == keep
    assert st2.read(v.id, MiB, 4096) == bytes(4096)
    st2.close()


def test_markers_are_written_once_per_durable_advance(tmp_path):
    pool = make_pool(tmp_path)
    st = Store.open(pool)
    v = st.create_volume("a", 64 * MiB)
    for i in range(10):
        st.write(v.id, i * MiB, os.urandom(4096))
    st.sync()
    for i in range(10):
        st.write(v.id, (20 + i) * MiB, os.urandom(4096))
    st.journal.close()
    from vstor.store.journal.segscan import ScanEnd

    seg = st.journal.current_segno
    raw = seg_read(pool, seg)
    markers = [k for k in range(len(raw)) if raw.startswith(b"VREC", k) and raw[k + 5] == REC_COMMIT]
    assert len(markers) == 2  # one after the volume-create sync, one after the explicit sync
    end = ScanEnd(seg, 64)
    assert sum(1 for _ in st.journal.scan(seg, 64, end)) == 21  # markers are not yielded as records
    assert end.reason == ""


def test_gc_reclaims_compressed_segments(tmp_path):
    pool = make_pool(tmp_path, compress="lz4")
    st = Store.open(pool)
    v = st.create_volume("a", 256 * MiB)
    text = (b"compressible vstor data " * 44000)[: MiB]
    for off in range(0, 48 * MiB, MiB):
        st.write(v.id, off, text)
    for off in range(0, 40 * MiB, MiB):  # overwrite most of it: the old segments are mostly dead
        st.write(v.id, off, os.urandom(MiB))
    st.sync()
    before = st.usage()["journal_bytes"]
    r = Reclaimer(st, min_dead=0.5)
    assert r.candidates(), "segments of compressed data must qualify by their logical live share"
    assert r.collect() > 0
    st.checkpoint()
    st.checkpoint()  # segments go once both checkpoint copies lie past them
    assert st.usage()["journal_bytes"] < before
    for off in range(40 * MiB, 48 * MiB, MiB):
        assert st.read(v.id, off, MiB) == text
    st.close()


def test_encrypted_writes_stay_readable_while_syncs_race_them(tmp_path):
    """Regression: a sync between reserve() and write() once made write() put a commit marker
    in front of a record already encrypted for the position without it (EIO on read)."""
    import threading

    pool = make_pool(tmp_path, encrypt=True)
    st = Store.open(pool)
    v = st.create_volume("a", 64 * MiB)
    stop = threading.Event()

    def syncer() -> None:
        while not stop.is_set():
            st.sync()

    t = threading.Thread(target=syncer)
    t.start()
    blocks = {}
    try:
        for i in range(1500):
            blocks[i] = os.urandom(4096)
            st.write(v.id, i * 8192, blocks[i])
    finally:
        stop.set()
        t.join()
    for i, data in blocks.items():
        assert st.read(v.id, i * 8192, 4096) == data, f"block {i}"
    st.close()


def test_pool_check_repair_cuts_damaged_durable_data_and_reports_it(tmp_path):
    import subprocess
    import sys

    pool = make_pool(tmp_path)
    st = Store.open(pool)
    v = st.create_volume("a", 64 * MiB)
    st.write(v.id, 0, os.urandom(256 * 1024))
    st.sync()
    st.write(v.id, MiB, os.urandom(256 * 1024))
    st.sync()
    st.write(v.id, 2 * MiB, os.urandom(4096))
    first = _loc_of(st, v.id, 0)
    st.journal.close()
    seg_flip(pool, loc_segno(first), loc_pos(first) + 64 + 32 + 1000)
    cli = [sys.executable, "-m", "vstor.cli.main", "pool", "check", pool]
    r = subprocess.run(cli, capture_output=True, text=True)
    assert r.returncode == 1 and "problem:" in r.stdout and "durable" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([*cli, "--repair"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "repair: cut segment" in r.stdout and "are lost" in r.stdout
    st2 = Store.open(pool)  # opens again; the damaged and later writes read as zeros
    assert st2.volume("a").size == 64 * MiB
    assert st2.read(v.id, 0, 4096) == bytes(4096)
    st2.close()


def test_pool_check_reports_damage_a_checkpoint_covers_in_the_newest_segment(tmp_path):
    """A pool closed cleanly: its newest records have no commit marker after them, but the
    checkpoint was written after they were synced, so damage there is not a torn tail, even
    where no live data is read (a block overwritten since, which block sums never read)."""
    from vstor.store.check import check_pool
    from vstor.store.superblock import load_superblock

    pool = make_pool(tmp_path)
    st = Store.open(pool)
    v = st.create_volume("a", 64 * MiB)
    st.write(v.id, 0, os.urandom(MiB))
    first = _loc_of(st, v.id, 0)
    st.write(v.id, 5 * 4096, os.urandom(4096))  # block 5 of the first record is dead now
    header, _ = st.journal.read_header(loc_segno(first), loc_pos(first))
    st.close()
    seg_flip(pool, loc_segno(first), loc_pos(first) + 64 + header.table_size + 5 * 4096 + 10)
    probe = Store(pool, load_superblock(pool), None)
    try:
        rep = check_pool(probe)
    finally:
        probe.journal.close()
    assert any("before the newest checkpoint" in p for p in rep.problems), (rep.problems, rep.notes)
    assert not any("torn tail" in n for n in rep.notes)
    st = Store.open(pool)  # the live data reads back; the checkpoint, not a scan, holds the map
    assert st.read(v.id, 0, 4096) and st.read(v.id, 6 * 4096, 4096)
    st.close()
