"""The journal's space written ahead of its tail while syncs are dense (journal/prewrite.py):
the policy, the blocks it leaves written, the data and recovery around it, a full
filesystem, and a crash while zeros are written. Local pools only (a RADOS pool has no
unwritten extents to avoid)."""

from __future__ import annotations

import os
import random
import subprocess
import textwrap
import threading
import time

import pytest
from crashkit import CHILD_PRELUDE, crash, pool_check_passes, reopen_clean, run_killed
from poolkit import MiB, make_pool, seg_path

from vstor.faults import Faults
from vstor.store.journal.prewrite import (
    MIN_SYNCS,
    PREWRITE_BELOW,
    PREWRITE_HIGH,
    PREWRITE_LOW,
    PREWRITE_STEP,
    WEIGHT,
    Prewriter,
    SyncDensity,
    prewrite_range,
)
from vstor.store.store import Store

VOL = 8 * MiB


def _wait(cond, what: str, timeout: float = 20.0) -> None:
    """The preparing runs in the journal's own thread: wait (bounded) for what it does."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _unwritten(path: str, start: int, end: int) -> int:
    """Bytes of [start, end) of ``path`` in unwritten extents (filefrag -v: FIEMAP flags)."""
    out = subprocess.run(["filefrag", "-v", "-b1", path], capture_output=True, text=True, check=True).stdout
    total = 0
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(":")]
        if len(parts) < 4 or not parts[0].isdigit() or "unwritten" not in line:
            continue
        lo, _, hi = parts[1].partition("..")
        a, b = int(lo), int(hi.split()[0]) + 1
        total += max(0, min(b, end) - max(a, start))
    return total


def _commits(st: Store, vid: int, rng: random.Random, model: bytearray, n: int, size: int = 8192) -> None:
    """``n`` small writes, each synced: a database's commits."""
    for _ in range(n):
        off = rng.randrange(VOL // size) * size
        data = rng.randbytes(size)
        st.write(vid, off, data)
        model[off : off + size] = data
        st.sync()


def _open(tmp_path, faults: Faults | None = None) -> tuple[str, Store, int, random.Random, bytearray]:
    pool = make_pool(tmp_path)
    st = Store.open(pool, faults=faults or Faults())  # its own Faults: never arm the shared NO_FAULTS
    vid = st.create_volume("v", VOL).id
    return pool, st, vid, random.Random(5), bytearray(VOL)


def _check(st: Store, vid: int, model: bytearray) -> None:
    assert bytes(st.read(vid, 0, VOL)) == model


# -- the policy ------------------------------------------------------------------------------


def test_syncs_are_dense_only_while_few_bytes_come_between_them():
    d = SyncDensity()
    assert not d.dense  # nothing measured yet
    total = 0

    def syncs(n: int, each: int) -> None:
        nonlocal total
        for _ in range(n):
            total += each
            d.observe(total)

    syncs(MIN_SYNCS - 1, 100)
    assert not d.dense  # too few to tell: a pool's first syncs are an admin command's
    syncs(1, 8192)
    assert d.dense
    syncs(WEIGHT, 8192)
    syncs(1, 4 * MiB)  # a burst of page writes between two commits: still dense on the whole
    assert d.dense and d.mean > 8192
    syncs(2 * WEIGHT, 4 * PREWRITE_BELOW)  # bulk writes: not dense any more
    assert not d.dense
    syncs(4 * WEIGHT, 8192)
    assert d.dense


def test_the_range_to_prepare_starts_past_the_tail_and_stays_within_the_segment():
    seg = 64 * MiB
    assert prewrite_range(1000, 1000 + PREWRITE_HIGH, seg) is None  # enough lies ahead
    assert prewrite_range(1000, 1000 + PREWRITE_LOW, seg) == (1000 + PREWRITE_LOW, 1000 + PREWRITE_LOW + PREWRITE_STEP)
    assert prewrite_range(1000, 0, seg) == (1000, 1000 + PREWRITE_STEP)  # never below the tail
    assert prewrite_range(10 * MiB, 11 * MiB, seg) == (11 * MiB, 11 * MiB + PREWRITE_STEP)
    assert prewrite_range(0, PREWRITE_HIGH - 10, seg) == (PREWRITE_HIGH - 10, PREWRITE_HIGH)
    assert prewrite_range(seg - 100, seg - 50, seg) == (seg - 50, seg)  # up to the segment's end
    assert prewrite_range(seg, seg, seg) is None


def test_the_preparing_thread_runs_steps_until_done_and_stops_for_good_on_an_error():
    calls: list[int] = []
    done = threading.Event()

    def step() -> bool:
        calls.append(1)
        if len(calls) in (3, 4):
            done.set()
        if len(calls) == 4:
            raise RuntimeError("injected")
        return len(calls) < 3  # the first poke: three steps, the last one finding nothing to do

    p = Prewriter(step, "vstor-prewrite test")
    p.poke()
    _wait(done.is_set, "the first poke's steps")
    _wait(lambda: not p._wake.is_set(), "the thread to go back to waiting")
    assert len(calls) == 3
    done.clear()
    p.poke()  # the step raises: logged, and the thread ends
    _wait(lambda: p._thread is not None and not p._thread.is_alive(), "the thread to end")
    p.poke()  # a broken preparer ignores pokes
    assert len(calls) == 4
    p.close()


def test_closing_a_preparer_that_never_ran_starts_no_thread():
    p = Prewriter(lambda: False, "vstor-prewrite idle")
    p.close()
    p.poke()
    assert p._thread is None


# -- the journal -----------------------------------------------------------------------------


def test_dense_syncs_leave_written_blocks_ahead_of_the_tail_and_the_data_intact(tmp_path):
    pool, st, vid, rng, model = _open(tmp_path)
    _commits(st, vid, rng, model, MIN_SYNCS + 10)
    _wait(lambda: st.journal.prepared_bytes >= PREWRITE_LOW + MiB, "space prepared ahead")
    segno, tail = st.journal.tail()
    path = seg_path(pool, segno)
    # the blocks past the tail are written (zeros), not unwritten extents any more
    assert _unwritten(path, tail, tail + PREWRITE_LOW) == 0
    with open(path, "rb") as f:
        f.seek(tail + 64 * 1024)
        assert f.read(4096) == bytes(4096)
    usage = st.usage()  # what status and metrics show
    assert usage["prepared_bytes"] == st.journal.prepared_bytes and 4096 < usage["sync_mean_bytes"] < 12288
    _commits(st, vid, rng, model, 300)  # the records land in the prepared space
    assert st.journal.tail()[1] > tail + 300 * 8192
    _check(st, vid, model)

    def preparing() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("vstor-prewrite " + pool)]

    assert preparing()
    st.close()
    assert not preparing()  # close() stopped it
    reopen_clean(pool, lambda st: _check(st, vid, model))


def test_bulk_writes_never_prepare_space(tmp_path):
    _pool, st, vid, rng, model = _open(tmp_path)
    for off in range(0, VOL, MiB):
        data = rng.randbytes(MiB)
        st.write(vid, off, data)
        model[off : off + MiB] = data
        st.sync()
    _commits(st, vid, rng, model, 3)  # a few small ones do not make the mean dense
    assert not st.journal.density.dense
    assert st.journal.prepared_bytes == 0
    _check(st, vid, model)
    st.close()


def test_a_crash_after_records_landed_in_prepared_space_loses_nothing_synced(tmp_path):
    """kill -9 as the journal's newest segment ends in zeros: recovery ends the scan there
    as a clean end, like unwritten space."""
    pool, st, vid, rng, model = _open(tmp_path)
    _commits(st, vid, rng, model, MIN_SYNCS + 10)
    _wait(lambda: st.journal.prepared_bytes >= PREWRITE_LOW, "space prepared ahead")
    _commits(st, vid, rng, model, 100)
    crash(st)
    reopen_clean(pool, lambda st: _check(st, vid, model))


def test_a_full_filesystem_stops_the_preparing_of_that_segment_only(tmp_path):
    faults = Faults()
    faults.arm("journal.prewrite", "enospc")
    pool, st, vid, rng, model = _open(tmp_path, faults)
    _commits(st, vid, rng, model, MIN_SYNCS + 10)
    _wait(lambda: faults.hits("journal.prewrite") >= 1, "the first step to fail")
    _commits(st, vid, rng, model, 50)
    assert st.journal.prepared_bytes == 0  # the first step failed: none in this segment
    assert faults.hits("journal.prewrite") == 1  # and no step was tried again
    _check(st, vid, model)
    first = st.journal.current_segno
    while st.journal.current_segno == first:  # the next segment prepares again
        _commits(st, vid, rng, model, 1, 16384)
    _wait(lambda: st.journal.prepared_bytes > 0, "space prepared in the next segment")
    _check(st, vid, model)
    st.close()


CHILD = CHILD_PRELUDE + textwrap.dedent("""
    from poolkit import MiB
    vid = st.create_volume("v", 8 * MiB).id
    model = bytearray(8 * MiB)
    rng = random.Random(3)
    arm()
    while True:  # commits until the fault kills the process
        off = rng.randrange(1024) * 8192
        data = rng.randbytes(8192)
        st.write(vid, off, data)
        st.sync()
        model[off : off + 8192] = data
        with open(pool + ".tmp", "wb") as f:  # every synced write, before the next (whole: renamed)
            f.write(model)
        os.replace(pool + ".tmp", pool + ".model")
""")


@pytest.mark.parametrize("at", [1, 5])
def test_a_crash_while_zeros_are_written_ahead_loses_nothing_synced(tmp_path, at):
    pool = make_pool(tmp_path)
    run_killed(CHILD.format(tests=os.path.dirname(__file__)), pool, f"journal.prewrite=kill@{at}")
    with open(pool + ".model", "rb") as f:
        model = f.read()
    st = Store.open(pool)
    try:
        got = bytes(st.read(st.volume("v").id, 0, VOL))
        # each synced write is in the model file before the next write begins, so the volume
        # may hold at most one write more than the model: the one synced as the process died
        diff = [i for i in range(0, VOL, 8192) if got[i : i + 8192] != model[i : i + 8192]]
        assert len(diff) <= 1
    finally:
        st.close()
    pool_check_passes(pool)


def test_a_reused_segment_file_counts_as_written_up_to_its_old_size(tmp_path):
    """A spare's blocks are written already: dense syncs in it prepare nothing (no zeros over
    its old contents), and its small records go by pwrite, not through the map."""
    from test_segment_reuse import _mapped, _next_segment, _pool_with_spares

    pool, st, vid, rng, model = _pool_with_spares(tmp_path, 13)
    reused = _next_segment(st, vid, rng, model)
    st.sync()  # the bulk writes count as one sync of many MiB: commits bring the mean down
    _commits(st, vid, rng, model, 4 * WEIGHT)
    assert st.journal.density.dense and st.journal.current_segno == reused
    time.sleep(0.2)  # a preparing thread, had it been poked, would have written by now
    assert st.journal.prepared_bytes == 0
    assert not _mapped(seg_path(pool, reused))
    st.close()
