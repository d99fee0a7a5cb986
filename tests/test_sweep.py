"""Sweeps (vstor/store/reads/sweep.py, sweeper.py): a scan of an aged volume has its scattered
records read ahead in journal order; the plan and the detector alone, then in a store."""

from __future__ import annotations

import errno
import logging
import os
import random
import threading
import time

import pytest
from poolkit import MiB, evict_segments, make_pool, resident, seg_path

from vstor.clock import ManualClock
from vstor.errors import NotFound, WouldBlock
from vstor.faults import Faults
from vstor.store.journal.format import make_loc
from vstor.store.reads.sweep import (
    COVER_SECONDS,
    COVERED,
    MAX_STREAMS,
    MIN_FILL,
    SCAN_AFTER,
    SCATTERED,
    SPAN,
    START,
    ScanDetector,
    SweepPlan,
)
from vstor.store.reads.sweeper import AHEAD, memory_available
from vstor.store.store import Store

SIZE = 32 * MiB
BLOCK = 4096


# -- the detector and the plan, alone ------------------------------------------------------------

def test_a_scan_is_told_until_a_sweep_starts_then_covered_once_planned():
    d = ScanDetector()
    verdicts = [d.note(1, 0, k * MiB, MiB, 0.0) for k in range(SCAN_AFTER + 1)]
    assert verdicts == [0] * (SCAN_AFTER - 1) + [START, START]  # until a sweep has started for it
    d.started(1, 0, (SCAN_AFTER + 1) * MiB, 0.0)
    assert d.note(1, 0, (SCAN_AFTER + 1) * MiB, MiB, 1.0) == 0
    d.covered(1, 0)
    assert d.note(1, 0, (SCAN_AFTER + 2) * MiB, MiB, 2.0) == COVERED
    d.covered(1, 0, False)  # the sweep failed: the reads ask for their records again, no new sweep
    assert d.note(1, 0, (SCAN_AFTER + 3) * MiB, MiB, 3.0) == 0
    d.covered(2, 0)  # no sweep of that image: nothing to say
    assert d.note(2, 0, 0, MiB, 3.0) == 0
    d.covered(1, 0)
    d.forget(1, 0)  # its pages are gone: the stream's next read starts another sweep
    assert d.note(1, 0, (SCAN_AFTER + 4) * MiB, MiB, 4.0) == START


def test_a_sweep_covers_the_later_streams_of_its_image_for_a_while():
    d = ScanDetector()
    for k in range(SCAN_AFTER):
        d.note(1, 0, k * MiB, MiB, 0.0)
    d.started(1, 0, SCAN_AFTER * MiB, 0.0)
    d.covered(1, 0)
    # a filesystem's scan jumps to the file's next extent: a new stream, covered at once
    assert d.note(1, 0, 500 * MiB, MiB, 1.0) == COVERED
    assert [d.note(1, 0, (501 + k) * MiB, MiB, 1.0) for k in range(SCAN_AFTER)] == [COVERED] * SCAN_AFTER
    assert d.note(1, 0, 0, MiB, 2.0) == COVERED  # within NEAR of where the sweep started
    # a stream before where the sweep started is not covered: told to sweep again
    d2 = ScanDetector()
    for k in range(SCAN_AFTER):
        d2.note(1, 0, (100 + k) * MiB, MiB, 0.0)
    d2.started(1, 0, (100 + SCAN_AFTER) * MiB, 0.0)
    assert [d2.note(1, 0, k * MiB, MiB, 1.0) for k in range(SCAN_AFTER)][-1] == START
    # ... and past COVER_SECONDS no stream is covered: a long scan is swept again further on
    assert [d.note(1, 0, (600 + k) * MiB, MiB, COVER_SECONDS + 1) for k in range(SCAN_AFTER)][-1] == START


def test_the_kernels_reordered_read_ahead_continues_a_scan_and_images_are_apart():
    d = ScanDetector()
    order = [0, 2, 1, 3]  # up to 3 MiB out of order, as FUSE's read-ahead sends them
    assert [d.note(1, 0, k * MiB, MiB, 0.0) for k in order] == [0, 0, 0, START]
    # another volume, and a snapshot image of volume 1, are streams of their own
    assert [d.note(2, 0, k * MiB, MiB, 0.0) for k in range(SCAN_AFTER)][-1] == START
    assert [d.note(1, 7, k * MiB, MiB, 0.0) for k in range(SCAN_AFTER)][-1] == START
    d2 = ScanDetector()
    assert not any(d2.note(1, 0, k * 64 * MiB, MiB, 0.0) for k in range(10))  # random large reads are no scan


def _piece(seg: int, pos: int, vol_off: int, n: int = BLOCK) -> tuple[int, int, int]:
    return vol_off, vol_off + n, make_loc(seg, pos)


def test_the_plan_reads_scattered_spans_first_each_group_in_journal_order():
    p = SweepPlan(small=64 << 10)
    rng = random.Random(1)
    pieces = []
    # segment 5, spans 0-1: records of random writes, scattered over the volume
    for k in range(2 * SPAN // (BLOCK + 128)):
        pieces.append(_piece(5, k * (BLOCK + 128), rng.randrange(1000) * MiB))
    # segment 2, spans 3 and 4: the pieces of large records cut by overwrites, in volume order
    for k in range(2 * SPAN // (8 * BLOCK)):
        pieces.append(_piece(2, 3 * SPAN + k * 8 * BLOCK, k * 8 * BLOCK, 6 * BLOCK))
    pieces.append(_piece(9, 0, 0, 1 * MiB))  # a large piece: the segment file's read-ahead's job
    pieces.append(_piece(7, 0, 0))  # one 4 KiB piece in a span: far below MIN_FILL
    rng.shuffle(pieces)  # the scan's order is not the journal's
    p.add(pieces[: len(pieces) // 2])
    p.add(pieces[len(pieces) // 2 :])
    assert p.runs(1 << 40) == [(5, 0, 2 * SPAN), (2, 3 * SPAN, 2 * SPAN)] and not p.cut
    assert p.runs(3 * SPAN) == [(5, 0, 2 * SPAN), (2, 3 * SPAN, SPAN)] and p.cut  # the ordered ones go first
    assert p.runs(SPAN) == [(5, 0, SPAN)] and p.cut
    assert p.needed > 3 * SPAN


def test_a_span_needed_less_than_its_fill_is_not_read_and_scattered_is_by_volume_spread():
    p = SweepPlan(small=64 << 10)
    few = (MIN_FILL - 1) // (BLOCK + 128)
    p.add([_piece(3, k * BLOCK, k * 100 * MiB) for k in range(few)])
    assert p.runs(1 << 40) == []
    p.add([_piece(4, k * BLOCK, k * BLOCK + (SCATTERED if k == 1 else 0)) for k in range(MIN_FILL // BLOCK)])
    assert p.runs(1 << 40) == [(4, 0, SPAN)]


# -- sweeps in a store ------------------------------------------------------------------------------

def _aged(tmp_path, clock: ManualClock | None = None) -> tuple[str, Store, int, bytearray]:
    """A 32 MiB volume written in 1 MiB records, then 3,000 random 4 KiB overwrites."""
    pool = make_pool(tmp_path)
    # Its own Faults: arming the shared NO_FAULTS would reach every other store of the process.
    st = Store.open(pool, faults=Faults(), clock=clock)
    vid = st.create_volume("v", SIZE).id
    model = bytearray(os.urandom(SIZE))
    for off in range(0, SIZE, MiB):
        st.write(vid, off, model[off : off + MiB])
    rng = random.Random(2)
    for _ in range(3000):
        off = rng.randrange(SIZE // BLOCK) * BLOCK
        data = os.urandom(BLOCK)
        st.write(vid, off, data)
        model[off : off + BLOCK] = data
    st.sync()
    return pool, st, vid, model


@pytest.fixture
def aged(tmp_path):
    pool, st, vid, model = _aged(tmp_path)
    yield pool, st, vid, model
    st.close()


def _wait(st: Store) -> None:
    th = st._sweeping
    if th is not None:
        th.join(30)
        assert not th.is_alive()


def _planned(st: Store, vid: int) -> list[tuple[int, int, int]]:
    plan = st._sweep_plan(vid, 0, 0)
    assert plan is not None
    return plan.runs(1 << 40)


def test_a_sweep_brings_the_scattered_records_into_the_page_cache(aged):
    pool, st, vid, model = aged
    runs = _planned(st, vid)
    assert runs and any(seg > min(r[0] for r in runs) for seg, _p, _n in runs)  # the random writes' segments
    evict_segments(pool)
    assert not any(resident(seg_path(pool, seg), pos, n) for seg, pos, n in runs)
    assert st.sweep(vid, 0)
    _wait(st)
    for seg, pos, n in runs:
        n = min(n, os.path.getsize(seg_path(pool, seg)) - pos)
        assert resident(seg_path(pool, seg), pos, n), (seg, pos, n)
    c = st.stats.as_dict()
    assert c["sweeps"] == 1 and c["sweep_bytes"] >= sum(n for _s, _p, n in runs) - SPAN
    buf = bytearray(SIZE)
    assert st.read_into(vid, 0, memoryview(buf)) == SIZE and buf == model  # reads verify as ever


def test_a_sweep_asks_the_kernel_for_the_spans_ahead_of_its_read(aged):
    """With each 1 MiB read a sweep asks (WILLNEED) for the next AHEAD bytes of its plan, so
    that the disk has several reads in flight: with its second read held back, the spans 3 to
    8 MiB ahead of its first (past what the kernel reads ahead of one read) come into the page
    cache, and only one span was read."""
    pool, st, vid, model = aged
    steps = [(seg, at, min(SPAN, pos + n - at)) for seg, pos, n in _planned(st, vid)
             for at in range(pos, pos + n, SPAN)]
    ahead = steps[3 : AHEAD // SPAN]
    assert len(ahead) >= 4
    evict_segments(pool)
    assert not any(resident(seg_path(pool, seg), at, n) for seg, at, n in ahead)
    st.faults.delay = 2.5
    st.faults.arm("sweep.read", "delay", 2)  # the second read waits
    assert st.sweep(vid, 0)
    deadline = time.monotonic() + 2
    while not all(resident(seg_path(pool, seg), at, n) for seg, at, n in ahead) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert st.faults.hits("sweep.read") == 2 and st._sweeping is not None and st._sweeping.is_alive()
    assert all(resident(seg_path(pool, seg), at, n) for seg, at, n in ahead)
    _wait(st)


def test_the_reads_of_a_covered_scan_take_turns_and_other_reads_do_not_wait(aged):
    """A covered scan's reads run one at a time (path.py ``_scan_turn``): while one is held at
    fault point ``scan.read``, a second read of the scan waits for its turn, and a 4 KiB read
    and a read that may not wait go on."""
    pool, st, vid, model = aged
    buf = memoryview(bytearray(MiB))
    for k in range(SCAN_AFTER):  # a scan: the sweep starts, plans, covers it
        st.read_into(vid, k * MiB, buf)
    _wait(st)
    st.faults.delay = 1.0
    st.faults.arm("scan.read", "delay", 1)  # the first covered read is held
    results: dict[str, bytes] = {}

    def read(name: str, off: int) -> None:
        results[name] = bytes(st.read(vid, off, MiB))

    first = threading.Thread(target=read, args=("first", SCAN_AFTER * MiB))
    first.start()
    deadline = time.monotonic() + 5
    while not st.faults.hits("scan.read") and time.monotonic() < deadline:
        time.sleep(0.005)
    second = threading.Thread(target=read, args=("second", (SCAN_AFTER + 1) * MiB))
    second.start()
    t0 = time.monotonic()
    assert st.read(vid, 20 * MiB + 4096, 4096) == model[20 * MiB + 4096 : 20 * MiB + 8192]  # random: no turn
    off = (SCAN_AFTER + 2) * MiB
    try:  # a read that may not wait (the NBD server's) takes no turn either
        assert st.read(vid, off, MiB, nowait=True) == model[off : off + MiB]
    except WouldBlock:
        pass
    assert time.monotonic() - t0 < 0.5
    time.sleep(0.2)
    assert first.is_alive() and second.is_alive() and st.faults.hits("scan.read") == 1  # waiting for its turn
    first.join()
    second.join()
    assert st.faults.hits("scan.read") == 2
    assert results["first"] == model[SCAN_AFTER * MiB : (SCAN_AFTER + 1) * MiB]
    assert results["second"] == model[(SCAN_AFTER + 1) * MiB : (SCAN_AFTER + 2) * MiB]


def test_a_covered_scan_whose_pages_are_gone_starts_another_sweep(aged):
    """Once the sweep is over, a covered read whose records are no longer in the page cache
    (dropped, as between a benchmark's passes, or evicted) takes no turn and ends the coverage:
    the next read of the stream starts another sweep. While the sweep still runs, a read
    ahead of it takes no turn either, but the coverage stands."""
    pool, st, vid, model = aged
    buf = memoryview(bytearray(MiB))
    for k in range(SCAN_AFTER):
        st.read_into(vid, k * MiB, buf)
    _wait(st)
    assert st.stats.as_dict()["sweeps"] == 1
    st.faults.arm("scan.read", "delay", 100)  # counts the turns taken (never fires)
    evict_segments(pool)
    k = SCAN_AFTER
    assert st.read_into(vid, k * MiB, buf) == MiB and buf == model[k * MiB : (k + 1) * MiB]
    assert st.faults.hits("scan.read") == 0  # its records were gone: no turn
    for k in range(SCAN_AFTER + 1, 2 * SCAN_AFTER + 2):
        st.read_into(vid, k * MiB, buf)
        assert buf == model[k * MiB : (k + 1) * MiB]
    _wait(st)
    assert st.stats.as_dict()["sweeps"] == 2
    turns = st.faults.hits("scan.read")
    st.read_into(vid, 12 * MiB, buf)  # swept again: its records are cached, it takes its turn
    assert st.faults.hits("scan.read") == turns + 1 and buf == model[12 * MiB : 13 * MiB]


def test_a_failed_cache_probe_fails_its_read_and_leaves_no_read_in_flight(aged, monkeypatch):
    pool, st, vid, model = aged
    buf = memoryview(bytearray(MiB))
    for k in range(SCAN_AFTER):
        st.read_into(vid, k * MiB, buf)
    _wait(st)

    def broken(segno: int, pos: int, view: memoryview) -> bool:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(st.journal, "pread_cached", broken)
    with pytest.raises(OSError):
        st.read_into(vid, SCAN_AFTER * MiB, buf)
    assert st._active_reads == 0  # segment deletion would otherwise wait for it for ever
    monkeypatch.undo()
    st.read_into(vid, SCAN_AFTER * MiB, buf)
    assert buf == model[SCAN_AFTER * MiB : (SCAN_AFTER + 1) * MiB]


def test_a_read_ahead_of_a_running_sweep_takes_no_turn_and_keeps_the_coverage(aged):
    pool, st, vid, model = aged
    evict_segments(pool)
    st.faults.delay = 1.5
    st.faults.arm("sweep.read", "delay", 1)  # planned and covering, nothing read yet
    buf = memoryview(bytearray(MiB))
    for k in range(SCAN_AFTER):
        st.read_into(vid, k * MiB, buf)
    deadline = time.monotonic() + 5
    while not st.faults.hits("sweep.read") and time.monotonic() < deadline:
        time.sleep(0.005)
    evict_segments(pool, settle=0.2)  # what the first reads brought in
    st.faults.arm("scan.read", "delay", 100)  # counts the turns taken (never fires)
    st.read_into(vid, SCAN_AFTER * MiB, buf)
    assert buf == model[SCAN_AFTER * MiB : (SCAN_AFTER + 1) * MiB]
    assert st.faults.hits("scan.read") == 0  # ahead of the sweep: no turn
    assert st._sweeping is not None and st._sweeping.is_alive()
    assert st._scans.note(vid, 0, (SCAN_AFTER + 1) * MiB, MiB, st.clock.monotonic()) == COVERED
    _wait(st)
    assert st.stats.as_dict()["sweeps"] == 1


def test_settle_waits_for_a_ranges_last_page_and_says_where_the_segment_ends(aged):
    pool, st, vid, model = aged
    seg, pos, _n = _planned(st, vid)[0]
    path = seg_path(pool, seg)
    evict_segments(pool)
    assert not resident(path, pos + SPAN - 4096, 4096)
    assert st.journal.settle(seg, pos, SPAN) == SPAN
    assert resident(path, pos + SPAN - 4096, 4096)  # read, copied nowhere but scratch
    end = os.path.getsize(path)
    assert st.journal.settle(seg, end - SPAN // 2, SPAN) == 0  # the segment ends first


def test_sequential_reads_of_many_pieces_start_one_sweep_and_random_reads_none(aged):
    pool, st, vid, model = aged
    buf = memoryview(bytearray(MiB))
    for k in range(3 * SCAN_AFTER):  # large reads, each of many pieces, but never near the one before
        off = (k // 2 + (16 if k % 2 else 0)) * MiB
        st.read_into(vid, off, buf)
        assert buf == model[off : off + MiB]
    _wait(st)
    assert st.stats.as_dict()["sweeps"] == 0
    asked = _counting_prefetch(st)
    for off in range(0, SIZE // 2, MiB):
        st.read_into(vid, off, buf)
        assert buf == model[off : off + MiB]
        if off == (SCAN_AFTER - 2) * MiB:
            assert st._sweeping is None  # not before SCAN_AFTER reads
    _wait(st)
    assert st.stats.as_dict()["sweeps"] == 1
    assert asked  # the reads before the sweep asked for their small records
    asked.clear()
    for off in range(SIZE // 2, SIZE, MiB):  # the sweep covers the rest of the scan: they ask no more
        st.read_into(vid, off, buf)
        assert buf == model[off : off + MiB]
    assert not asked and st.stats.as_dict()["sweeps"] == 1


@pytest.mark.usefixtures("pool_backend")  # on a local and a RADOS pool (tests/poolsite.py)
def test_a_remote_pool_is_never_swept(aged, request):
    pool, st, vid, model = aged
    remote = "rados" in request.node.name
    assert st.sweep(vid, 0) is not remote
    _wait(st)
    assert st.stats.as_dict()["sweeps"] == (0 if remote else 1)


def _counting_prefetch(st: Store) -> list[int]:
    """The positions the store's reads ask the journal for (WILLNEED) from now on."""
    asked: list[int] = []
    prefetch = st.journal.prefetch

    def counted(segno: int, pos: int, size: int) -> None:
        asked.append(pos)
        prefetch(segno, pos, size)

    st.journal.prefetch = counted  # type: ignore[method-assign]
    return asked


@pytest.mark.parametrize("action", ["eio", "bug"])
def test_a_failed_sweep_ends_and_the_reads_go_on_asking(aged, action, caplog):
    pool, st, vid, model = aged
    st.faults.arm("sweep.read", action, 2)
    buf = memoryview(bytearray(MiB))
    with caplog.at_level(logging.DEBUG, logger="vstor.store"):
        for off in range(0, SCAN_AFTER * MiB, MiB):  # a scan: its sweep starts, then fails
            st.read_into(vid, off, buf)
        _wait(st)
    assert st.faults.hits("sweep.read") == 2
    assert st.stats.as_dict()["sweep_bytes"] == SPAN  # the first read only
    if action == "bug":
        assert "sweep of volume 1 failed" in caplog.text and "RuntimeError" in caplog.text
    asked = _counting_prefetch(st)
    for off in range(SCAN_AFTER * MiB, SIZE, MiB):  # the scan goes on, asking for its records again
        st.read_into(vid, off, buf)
        assert buf == model[off : off + MiB]
    assert asked and st.stats.as_dict()["sweeps"] == 1  # and no other sweep for that scan
    assert st.sweep(vid, 0)  # another may sweep again
    _wait(st)


def test_the_memory_budget_bounds_a_sweep_and_one_runs_at_a_time(aged):
    pool, st, vid, model = aged
    st.memory_available = lambda: 4 * SPAN  # a quarter of it: one span
    st.faults.delay = 0.2
    st.faults.arm("sweep.read", "delay", 1)
    assert st.sweep(vid, 0)
    assert not st.sweep(vid, 0)  # one at a time
    _wait(st)
    assert st.stats.as_dict()["sweep_bytes"] == SPAN
    st.memory_available = lambda: 0  # nothing known: nothing read
    assert st.sweep(vid, 0)
    _wait(st)
    assert st.stats.as_dict()["sweep_bytes"] == SPAN


def test_closing_the_store_stops_a_sweep_and_starts_no_other(tmp_path):
    pool, st, vid, model = _aged(tmp_path)
    st.faults.delay = 0.5
    st.faults.arm("sweep.read", "delay", 1, repeat=True)
    assert st.sweep(vid, 0)
    th = st._sweeping
    assert th is not None
    st.close()  # stops the sweep after the read in progress
    assert not th.is_alive()
    assert st.faults.hits("sweep.read") <= 2
    assert not st.sweep(vid, 0)
    assert not [t for t in threading.enumerate() if t.name.startswith("vstor-sweep")]


def test_a_sweep_of_a_deleted_volume_or_snapshot_reads_nothing(aged):
    pool, st, vid, model = aged
    with pytest.raises(NotFound):
        st._sweep_plan(vid, 99, 0)  # no such snapshot
    wid = st.create_volume("w", MiB).id
    st.delete_volume("w")
    assert st.sweep(wid, 0)  # a sweep is started for a volume deleted since the read ...
    _wait(st)
    assert st.stats.as_dict()["sweeps"] == 0 and st.stats.as_dict()["sweep_bytes"] == 0  # ... and reads nothing


def test_memory_available_is_read_from_meminfo_and_zero_when_it_cannot_be(tmp_path):
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       24684032 kB\nMemFree:        16701440 kB\nMemAvailable:   24096768 kB\n")
    assert memory_available(str(info)) == 24096768 * 1024
    info.write_text("MemTotal:       24684032 kB\n")  # a kernel before 3.14: nothing swept
    assert memory_available(str(info)) == 0
    assert memory_available(str(tmp_path / "missing")) == 0
    assert memory_available() > 0  # this machine's


def test_the_detector_remembers_a_bounded_number_of_images():
    d = ScanDetector()
    for sid in range(MAX_STREAMS + 10):  # a backup job's snapshot a day, each scanned and swept once
        d.note(1, sid, 0, MiB, 0.0)
        d.started(1, sid, MiB, 0.0)
    for seen in (d._streams, d._sweeps):
        assert len(seen) == MAX_STREAMS and (1, 0) not in seen and (1, MAX_STREAMS + 9) in seen


def test_a_sweep_covers_its_images_later_streams_until_its_time_is_up(tmp_path):
    """A scan through a filesystem jumps between a file's extents: one sweep, not one per jump;
    past COVER_SECONDS (the store's clock) a new stream may sweep again."""
    clock = ManualClock()
    pool, st, vid, model = _aged(tmp_path, clock)
    try:
        buf = memoryview(bytearray(MiB))

        def stream(first: int) -> None:
            for off in range(first * MiB, (first + SCAN_AFTER + 1) * MiB, MiB):
                st.read_into(vid, off, buf)
                assert buf == model[off : off + MiB]
            _wait(st)

        stream(0)
        assert st.stats.as_dict()["sweeps"] == 1
        stream(16)  # a jump: covered by the first sweep
        assert st.stats.as_dict()["sweeps"] == 1
        clock.advance(COVER_SECONDS + 1)
        stream(24)
        assert st.stats.as_dict()["sweeps"] == 2
    finally:
        st.close()


def test_segments_deleted_since_the_plan_are_skipped_and_the_sweep_goes_on(tmp_path):
    """GC deletes a segment between the plan and its reads: the sweep skips what is gone, reads
    the rest, and the store stays whole."""
    pool, st, vid, model = _aged(tmp_path)
    try:
        other = st.create_volume("w", SIZE).id  # data in the newest segment, which stays
        for off in range(0, 4 * MiB, BLOCK * 64):
            st.write(other, off, os.urandom(BLOCK))
        st.sync()
        runs = _planned(st, vid)
        st.faults.arm("sweep.read", "delay", 1)
        st.faults.delay = 0.3
        assert st.sweep(vid, 0)
        deadline = time.monotonic() + 10
        while not st.faults.hits("sweep.read") and time.monotonic() < deadline:  # planned, about to read
            time.sleep(0.005)
        st.delete_volume("v")  # while the sweep waits before its first read
        st.checkpoint()
        st.checkpoint()
        gone = {seg for seg, _p, _n in runs if not os.path.exists(seg_path(pool, seg))}
        assert gone  # the aged volume's older segments were deleted
        _wait(st)
        kept = sum(min(n, os.path.getsize(seg_path(pool, seg)) - pos) for seg, pos, n in runs if seg not in gone)
        assert st.stats.as_dict()["sweep_bytes"] == kept
        assert st.read(other, 0, BLOCK) is not None
    finally:
        st.close()
