"""Regression tests for the damage reproductions of issue #22: a damaged segment header,
a missing checkpoint, a damaged checkpoint copy, a damaged superblock; what pool check says
and what --repair mends. In process, on the CLI for pool check."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from poolkit import MiB, blob_delete, blob_flip, make_pool, seg_delete, seg_flip, seg_list, state_flip

from vstor.errors import CorruptData
from vstor.store.backend.stub import backend_for
from vstor.store.catalog import snapshots
from vstor.store.maintenance.checkpoint import COPIES, read_checkpoints
from vstor.store.maintenance.reclaim import Reclaimer
from vstor.store.store import Store
from vstor.store.superblock import load_superblock_from

pytestmark = pytest.mark.usefixtures("pool_backend")  # each test on a local and a RADOS pool (tests/poolsite.py)


def pool_check(pool: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vstor.cli.main", "pool", "check", pool, *extra],
                          capture_output=True, text=True, timeout=120)


def newest_segment(pool: str) -> int:
    return max(seg_list(pool))


def newest_checkpoint(pool: str) -> str:
    """The name of the checkpoint copy with the highest generation."""
    with backend_for(pool) as be:
        return read_checkpoints(be, load_superblock_from(be).uuid_bytes).valid[0][0]


@pytest.mark.parametrize("byte", [12, 40])
def test_a_flipped_bit_in_the_newest_segment_header_is_damage_not_a_torn_tail(tmp_path, byte):
    pool = make_pool(tmp_path)
    st = Store.open(pool)
    vid = st.create_volume("v", 16 * MiB).id
    old, new = os.urandom(MiB), os.urandom(MiB)
    st.write(vid, 0, old)
    snapshots.create(st, "v", "s")
    st.close()
    segno = newest_segment(pool)
    seg_flip(pool, segno, byte)

    r = pool_check(pool)
    assert r.returncode == 1 and f"journal segment {segno} has a damaged header" in r.stdout, r.stdout
    assert "problem: " in r.stdout and "run 'vstor pool check'" not in r.stdout
    with pytest.raises(CorruptData, match="damaged header"):
        Store.open(pool)  # never cut: the checkpoint points into it

    r = pool_check(pool, "--repair")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"repair: rewrote the damaged header of journal segment {segno}" in r.stdout
    st = Store.open(pool)
    assert st.journal.current_segno > segno  # a number once used is never given out again
    st.write(vid, 0, new)
    sid = snapshots.get(st, "v", "s").id
    assert st.read(vid, 0, MiB, sid=sid) == old and st.read(vid, 0, MiB) == new
    st.close()
    assert pool_check(pool).returncode == 0


def _aged_pool(tmp_path) -> tuple[str, int, bytes]:
    """A 48M volume overwritten four times on 16M segments: GC deletes the early segments."""
    pool = make_pool(tmp_path)
    st = Store.open(pool)
    vid = st.create_volume("big", 48 * MiB).id
    for _round in range(4):
        data = os.urandom(48 * MiB)
        for off in range(0, 48 * MiB, 4 * MiB):
            st.write(vid, off, data[off : off + 4 * MiB])
        st.sync()
        Reclaimer(st, min_dead=0.5).collect()
        st.checkpoint()
        st.checkpoint()
    assert 1 not in st.journal.segments()
    st.close()
    return pool, vid, data


def test_a_missing_checkpoint_never_drops_volumes(tmp_path):
    pool, vid, data = _aged_pool(tmp_path)
    segs = seg_list(pool)
    for name in COPIES:
        blob_delete(pool, f"meta/{name}")
    r = pool_check(pool)
    assert r.returncode == 1 and "checkpoint copy meta/checkpoint.a is missing" in r.stdout, r.stdout
    with pytest.raises(CorruptData, match="no valid checkpoint.*will not start"):
        Store.open(pool)
    r = pool_check(pool, "--repair")  # segments 1.. were reclaimed: it cannot rebuild exactly, and says so
    assert r.returncode != 0 and "cannot be rebuilt exactly" in r.stdout + r.stderr, r.stdout + r.stderr
    assert seg_list(pool) == segs  # nothing was cut or deleted


def test_one_lost_checkpoint_copy_is_worked_around_and_reported(tmp_path):
    pool, vid, data = _aged_pool(tmp_path)
    blob_delete(pool, f"meta/{COPIES[0]}")
    r = pool_check(pool)
    assert r.returncode == 1 and "checkpoint copy meta/checkpoint.a is missing" in r.stdout, r.stdout
    st = Store.open(pool)
    assert st.recovery["damage"] == ["checkpoint copy meta/checkpoint.a is missing"]
    assert st.read(vid, 0, 48 * MiB) == data
    st.close()
    assert pool_check(pool).returncode == 0  # the open rewrote both copies


def test_a_flipped_bit_in_the_newest_checkpoint_falls_back_to_the_older_copy(tmp_path):
    pool = make_pool(tmp_path)
    st = Store.open(pool)
    vid = st.create_volume("v", 16 * MiB).id
    first, second = os.urandom(2 * MiB), os.urandom(MiB)
    st.write(vid, 0, first)
    st.checkpoint()
    st.write(vid, MiB, second)  # after the older copy: replayed from the journal
    st.trim(vid, 0, 64 * 1024)
    st.close()
    newest = newest_checkpoint(pool)
    blob_flip(pool, f"meta/{newest}", 200)
    r = pool_check(pool)
    assert r.returncode == 1 and f"checkpoint copy meta/{newest} is damaged" in r.stdout, r.stdout
    r = pool_check(pool, "--repair")
    assert r.returncode == 0 and "both checkpoint copies rewritten" in r.stdout, r.stdout
    st = Store.open(pool)
    want = bytes(64 * 1024) + first[64 * 1024 : MiB] + second
    assert st.read(vid, 0, 2 * MiB) == want
    st.close()


def test_a_complete_journal_rebuilds_the_maps_when_both_copies_are_lost(tmp_path):
    pool = make_pool(tmp_path)
    st = Store.open(pool)
    vid = st.create_volume("v", 16 * MiB).id
    data = os.urandom(3 * MiB)
    st.write(vid, 0, data)
    snapshots.create(st, "v", "s")
    st.trim(vid, MiB, MiB)
    st.close()
    for name in COPIES:
        blob_flip(pool, f"meta/{name}", 20)
    with pytest.raises(CorruptData, match="no valid checkpoint"):
        Store.open(pool)
    r = pool_check(pool, "--repair")
    assert r.returncode == 0 and "rebuilt the volume maps from the whole journal" in r.stdout, r.stdout
    st = Store.open(pool)
    sid = snapshots.get(st, "v", "s").id
    assert st.read(vid, 0, 3 * MiB, sid=sid) == data
    assert st.read(vid, 0, 3 * MiB) == data[:MiB] + bytes(MiB) + data[2 * MiB :]
    st.close()


def test_a_damaged_superblock_is_read_from_its_copy_and_repaired(tmp_path):
    pool = make_pool(tmp_path)
    blob_flip(pool, "pool.json", 30)
    st = Store.open(pool)  # the copy serves
    st.close()
    r = pool_check(pool)
    assert r.returncode == 1 and "superblock" in r.stdout, r.stdout
    r = pool_check(pool, "--repair")
    assert r.returncode == 0 and "rewrote" in r.stdout and "pool.json" in r.stdout, r.stdout
    assert pool_check(pool).returncode == 0


def test_a_missing_journal_segment_after_the_checkpoint_refuses_the_open(tmp_path):
    pool = make_pool(tmp_path)
    st = Store.open(pool)
    vid = st.create_volume("v", 16 * MiB).id
    st.write(vid, 0, os.urandom(MiB))
    st.close()
    segno = newest_segment(pool)
    seg_delete(pool, segno)
    with pytest.raises(CorruptData, match=f"segment {segno} is missing"):
        Store.open(pool)
    r = pool_check(pool)
    assert r.returncode == 1 and f"segment {segno} is missing" in r.stdout


def test_a_damaged_consumer_position_file_is_read_from_its_copy_and_repaired(tmp_path):
    pool = make_pool(tmp_path)
    st = Store.open(pool)
    st.create_volume("v", 16 * MiB)
    st.consumers.register("pair", (1, 64))
    st.consumers.commit("pair", st.journal.tail())
    want = st.consumers.positions()
    st.close()
    state_flip(pool, "meta/consumers.json", 25)
    st = Store.open(pool)
    assert st.consumers.positions() == want
    st.journal.close()
    r = pool_check(pool)
    assert r.returncode == 1 and "consumers.json" in r.stdout, r.stdout
    r = pool_check(pool, "--repair")
    assert r.returncode == 0 and "journal consumer positions" in r.stdout, r.stdout


@pytest.mark.root
@pytest.mark.local_only("a daemon on a local pool (array_factory); test_rados_array.py starts arrays on RADOS")
def test_array_start_refuses_a_pool_without_a_checkpoint_in_one_line(array_factory):
    from harness import one_error_line

    from vstor.control.host.mounts import fuse_mounted

    arr = array_factory()
    arr.start()
    arr.create("v", "16M")
    with open(arr.image("v"), "r+b") as f:
        f.write(os.urandom(MiB))
        os.fsync(f.fileno())
    arr.stop()
    for name in COPIES:
        os.unlink(os.path.join(arr.pool, "meta", name))
    line = one_error_line(arr.start(check=False), "array start on a pool without a checkpoint")
    assert "no valid checkpoint" in line and "pool check" in line, line
    assert not fuse_mounted(arr.mnt)
    with open(os.path.join(arr.pool, "log", "daemon.log")) as f:
        assert "no valid checkpoint" in f.read()
    r = arr.vstor("pool", "check", arr.pool, check=False)
    assert r.returncode == 1 and "checkpoint copy meta/checkpoint.a is missing" in r.stdout, r.stdout
