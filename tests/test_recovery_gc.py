"""Checkpoints and recovery, garbage collection and compaction, journal consumers and the
maintenance tick."""

from __future__ import annotations

import json
import logging
import os
import random
import time

import pytest
from poolkit import SEG, MiB, make_pool, seg_exists

from vstor.clock import ManualClock
from vstor.errors import AlreadyExists, NotFound
from vstor.faults import Faults
from vstor.store.catalog import snapshots
from vstor.store.journal.consumers import read_records
from vstor.store.journal.format import MAX_RECORD, SEGMENT_HEADER_SIZE
from vstor.store.maintenance.reclaim import HARD_FACTOR, Reclaimer, max_fragments
from vstor.store.maintenance.steps import StepsFailed
from vstor.store.maps import fragments
from vstor.store.maps.chunkmap import FRAGMENTED
from vstor.store.store import Store

pytestmark = pytest.mark.usefixtures("pool_backend")  # each test on a local and a RADOS pool (tests/poolsite.py)


def write(store: Store, vid: int, model: bytearray, off: int, data: bytes) -> None:
    store.write(vid, off, data)
    model[off : off + len(data)] = data


# -- checkpoints -----------------------------------------------------------------------------

def test_replay_starts_at_the_checkpoint(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 16 * MiB).id
    rng = random.Random(1)
    model = bytearray(16 * MiB)
    for _ in range(40):
        write(store, vid, model, rng.randrange(15 * MiB), rng.randbytes(rng.randrange(1, 300_000)))
    store.trim(vid, 3 * MiB, MiB)
    model[3 * MiB : 4 * MiB] = bytes(MiB)
    store.checkpoint()
    assert store.ckpt_position == store.journal.tail()
    # Three more records after the checkpoint, then a crash (no checkpoint at close).
    write(store, vid, model, 12345, rng.randbytes(70_000))
    write(store, vid, model, 15 * MiB + 1, rng.randbytes(4000))
    store.trim(vid, 5 * MiB, 100_000)
    model[5 * MiB : 5 * MiB + 100_000] = bytes(100_000)
    store.sync()
    mapped = store.state.mapped_bytes()
    store.journal.close()

    store = Store.open(pool)
    assert store.recovery["records"] == 3
    assert store.recovery["torn_tail"] is None
    assert store.read(vid, 0, len(model)) == model
    assert store.state.mapped_bytes() == mapped
    assert sum(store.state.live.values()) == mapped
    store.close()


def test_checkpoint_restores_sequence_numbers(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 16 * MiB).id
    store.write(vid, 0, b"a" * 100)
    store.write(vid, 4096, b"b" * 100)
    store.trim(vid, 0, 50)
    assert store.state.group_seq[0] == 3
    store.close()
    store = Store.open(pool)
    assert store.state.group_seq[0] == 3
    store.consumers.register("c", store.journal.tail())
    store.write(vid, 8192, b"c" * 100)
    store.sync()
    assert [e.seq for e in read_records(store, "c")] == [4]
    store.close()


# -- garbage collection ----------------------------------------------------------------------

def _overwritten_pool(tmp_path, encrypt: bool = False) -> tuple[str, Store, int, bytearray]:
    """12 MiB written, then its first 10 MiB overwritten: segment 1 ends up mostly dead."""
    pool = make_pool(tmp_path, encrypt=encrypt)
    store = Store.open(pool)
    vid = store.create_volume("v", 32 * MiB).id
    model = bytearray(32 * MiB)
    write(store, vid, model, 0, os.urandom(12 * MiB))
    for off in range(0, 10 * MiB, MiB):
        write(store, vid, model, off, os.urandom(MiB))
    store.sync()
    assert store.journal.current_segno >= 2
    return pool, store, vid, model


@pytest.mark.parametrize("mode", ["collect", "collect_encrypted", "crash_after_collect", "tick"])
def test_gc_relocates_live_data_and_frees_segments(tmp_path, mode):
    pool, store, vid, model = _overwritten_pool(tmp_path, encrypt=mode == "collect_encrypted")
    clock = ManualClock()
    gc = Reclaimer(store, clock=clock, min_dead=0.3)
    assert gc.candidates() == {1}
    live1 = store.state.live[1]
    assert 0 < live1 < 0.7 * SEG
    before = store.usage()["journal_bytes"]
    relocated = store.stats.relocated_bytes

    if mode == "tick":
        gc.tick()  # collects; the emptied segment waits for the scheduled checkpoint
        assert 1 not in store.state.live and seg_exists(pool, 1)
        clock.advance(gc.checkpoint_interval)
        gc.tick()  # the checkpoint interval has passed: checkpoint; the older copy still needs it
        assert seg_exists(pool, 1)
        clock.advance(gc.checkpoint_interval)
        gc.tick()  # both checkpoint copies lie past it: deleted
    else:
        moved = gc.collect()
        assert moved == live1 == store.stats.relocated_bytes - relocated
        assert store.stats.compacted_bytes == 0  # GC moves only
        assert 1 not in store.state.live
        assert gc.candidates() == set()
        assert store.read(vid, 0, len(model)) == model
        if mode == "crash_after_collect":
            store.sync()
            store.journal.close()
            store = Store.open(pool)  # replays writes, overwrites and relocations
            assert store.read(vid, 0, len(model)) == model
            assert not seg_exists(pool, 1)  # deleted by recovery's checkpoint
            store.close()
            return
        assert seg_exists(pool, 1)  # only a checkpoint deletes it, once both copies lie past it
        store.checkpoint()
        assert seg_exists(pool, 1)
        store.checkpoint()

    assert not seg_exists(pool, 1)
    assert store.stats.segments_deleted >= 1
    after = store.usage()["journal_bytes"]
    assert after < before - 8 * MiB
    assert store.read(vid, 0, len(model)) == model
    assert sum(store.state.live.values()) == store.state.mapped_bytes() == 12 * MiB
    store.close()
    store = Store.open(pool)
    assert store.read(vid, 0, len(model)) == model
    assert store.recovery["records"] == 0
    store.close()


def test_gc_waits_while_the_host_only_reads_and_the_pool_has_room(tmp_path):
    """Reads make no garbage: a tick after host reads alone moves nothing (GC's moves took the
    readers' CPU). GC runs after a tick with a write, a trim or a replicated write, after a
    quiet one, and while the host reads if the pool is short of room."""
    pool, store, vid, model = _overwritten_pool(tmp_path)
    gc = Reclaimer(store, clock=ManualClock(), min_dead=0.3, bytes_per_tick=MiB)
    assert gc.candidates() == {1}

    def tick_moved() -> int:
        before = store.stats.relocated_bytes
        gc.tick()
        return store.stats.relocated_bytes - before

    store.read(vid, 0, 4096)
    assert tick_moved() == 0 and gc.gc_state == "waiting: the host is reading"
    assert tick_moved() > 0 and gc.gc_state == "collecting"  # a quiet tick
    store.read(vid, MiB, 4096)
    write(store, vid, model, 20 * MiB, b"w" * 4096)
    assert tick_moved() > 0  # a write: GC keeps pace
    store.read(vid, 0, 4096)
    store.trim(vid, 4 * MiB, 4096)
    model[4 * MiB : 4 * MiB + 4096] = bytes(4096)
    assert tick_moved() > 0  # a trim makes garbage too
    store.read(vid, 0, 4096)
    assert tick_moved() == 0
    store.read(vid, 0, 4096)
    store.replicated(vid, 28 * MiB, 4096, b"r" * 4096, 0)  # a replication peer's copy data
    model[28 * MiB : 28 * MiB + 4096] = b"r" * 4096
    assert tick_moved() > 0  # not a host write, but garbage all the same
    store.read(vid, 0, 4096)
    assert tick_moved() == 0
    store.space.reserve = store.space.refresh()  # no room beyond the reserve
    store.read(vid, 0, 4096)
    assert tick_moved() > 0
    store.space.reserve = 0
    while gc.candidates():
        gc.tick()
    store.read(vid, 0, 4096)
    gc.tick()
    assert gc.gc_state == "waiting: the host is reading"
    gc.tick()
    assert gc.gc_state == "idle: no segment to clean"
    assert store.read(vid, 0, len(model)) == model
    store.close()


def test_a_budgeted_gc_pass_empties_the_least_live_segment_first(tmp_path):
    """Three segments of one volume, in address order; the middle one is the least live. A
    pass whose budget covers only that segment's live data must empty it, and not thin out
    the first segment because its addresses come first. Segments that become candidates
    during the work wait until it is done."""
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 64 * MiB).id
    model = bytearray(64 * MiB)
    for off in range(0, 48 * MiB, MiB):  # segments 1-3 hold about [0,16), [16,32), [32,48) MiB
        write(store, vid, model, off, os.urandom(MiB))
    rng = random.Random(7)
    seg1 = sorted(rng.sample(range(16), 8))  # half of segment 1 overwritten
    seg2 = [m for m in range(16, 32) if m % 8]  # 14 of segment 2's 16 MiB
    for m in seg1 + seg2:
        write(store, vid, model, m * MiB, os.urandom(MiB))
    gc = Reclaimer(store, min_dead=0.4)
    assert gc.candidates() >= {1, 2}
    live = dict(store.state.live)
    assert live[2] < live[1], live
    moved = gc.collect(max_bytes=live[2])
    assert moved == live[2]
    assert store.state.live.get(2, 0) == 0, "the least live segment was not emptied"
    assert store.state.live[1] == live[1], "segment 1 was thinned before segment 2 was empty"
    # A candidate that appears now waits for the work already found.
    for m in range(32, 44):
        write(store, vid, model, m * MiB, os.urandom(MiB))
    assert 3 in gc.candidates()
    gc.collect(max_bytes=MiB)
    assert store.state.live.get(3, 0) > 0 and store.state.live[1] < live[1]
    assert gc.collect() > 0 and gc.candidates() == set()
    assert store.read(vid, 0, len(model)) == model
    store.close()


def test_gc_leaves_mostly_live_segments_alone(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 32 * MiB).id
    model = bytearray(32 * MiB)
    write(store, vid, model, 0, os.urandom(14 * MiB))
    write(store, vid, model, 14 * MiB, os.urandom(4 * MiB))  # rolls over to segment 2
    write(store, vid, model, 0, os.urandom(MiB))  # segment 1 is still ~93% live
    assert store.journal.current_segno == 2
    gc = Reclaimer(store, min_dead=0.3)
    assert gc.candidates() == set()
    assert gc.collect() == 0
    assert store.stats.relocated_bytes == store.stats.compacted_bytes == 0
    assert store.read(vid, 0, len(model)) == model
    store.close()


def test_compaction_merges_fragmented_chunks(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    cs = store.sb.chunk_size
    vid = store.create_volume("v", 8 * MiB).id
    model = bytearray(8 * MiB)
    rng = random.Random(3)
    busy, calm = 2, 5  # chunk numbers
    most = max_fragments(cs)
    assert most == cs // 4096
    for i in range(most + 8):  # pieces of 1000 bytes, 2 KiB apart: split finer than 4 KiB
        write(store, vid, model, busy * cs + i * 2048 + 17, rng.randbytes(1000))
    pages = list(range(cs // 4096))
    rng.shuffle(pages)
    for i in pages:  # the whole chunk in 4 KiB random writes: as many extents, no more
        write(store, vid, model, calm * cs + i * 4096, rng.randbytes(4096))
    vm = store.state.maps[vid]
    assert len(vm.chunk_extents(busy)) == most + 8
    calm_extents = vm.chunk_extents(calm)
    assert len(calm_extents) == most
    gc = Reclaimer(store)
    assert gc.candidates() == set()
    assert gc.collect() == cs  # only the busy chunk
    assert vm._slot(busy) not in (0, FRAGMENTED) and busy not in vm.overlays
    assert vm.chunk_extents(busy) == [(busy * cs, (busy + 1) * cs, vm._slot(busy))]
    assert vm.chunk_extents(calm) == calm_extents
    assert store.read(vid, 0, len(model)) == model
    assert gc.collect() == 0  # nothing left to do
    store.sync()
    store.journal.close()
    store = Store.open(pool)
    vm = store.state.maps[vid]
    assert vm._slot(busy) not in (0, FRAGMENTED)
    assert store.read(vid, 0, len(model)) == model
    store.close()


def _fragmented(store: Store, vid: int, model: bytearray, chunks: range, pieces: int, seed: int) -> None:
    """``pieces`` separate 1000-byte writes into each chunk of ``chunks``: that many extents each."""
    cs, rng = store.sb.chunk_size, random.Random(seed)
    for chunk in chunks:
        for i in range(pieces):
            write(store, vid, model, chunk * cs + i * 4096 + 17, rng.randbytes(1000))


def _fragmented_pool(tmp_path, seed: int) -> tuple[str, Store, int, bytearray]:
    """A pool with an 8 MiB volume whose chunks 0-3 hold 20 extents each, and its model."""
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 8 * MiB).id
    model = bytearray(8 * MiB)
    _fragmented(store, vid, model, range(0, 4), 20, seed=seed)
    return pool, store, vid, model


def test_fragment_budget_compacts_the_most_fragmented_chunks(tmp_path):
    """Over the budget, the tick compacts the live chunks holding the most extents until the
    count is below the low-water mark; the data and a reopen are unchanged."""
    pool, store, vid, model = _fragmented_pool(tmp_path, seed=5)  # 4 chunks of 20 extents
    _fragmented(store, vid, model, range(4, 10), 5, seed=6)  # 6 chunks of 5
    vm = store.state.maps[vid]
    counts = {c: len(vm.chunk_extents(c)) for c in range(10)}
    total = sum(counts.values())
    clock = ManualClock()
    gc = Reclaimer(store, clock=clock, fragment_budget=total - 1, fragment_interval=10.0)
    gc.tick()
    assert gc.fragment_extents == total
    # Low water is 0.75 of the budget (81 of 110 extents): the 20-extent chunks go first, and
    # two of them (19 extents freed each) suffice; the others are untouched.
    left = {c: len(vm.chunk_extents(c)) for c in range(10)}
    assert total == 110 and sum(1 for c in range(4) if left[c] == 1) == 2
    assert all(left[c] == counts[c] for c in range(10) if left[c] != 1)
    assert sum(left.values()) == 110 - 2 * 19
    assert store.read(vid, 0, len(model)) == model
    clock.advance(5.0)  # not counted again before the interval
    gc.tick()
    assert gc.fragment_extents == total
    clock.advance(5.0)
    gc.tick()
    assert gc.fragment_extents == sum(n for n in left.values() if n > 1)  # within budget: nothing more
    assert {c: len(vm.chunk_extents(c)) for c in range(10)} == left
    store.sync()
    store.journal.close()
    store = Store.open(pool)
    assert store.read(vid, 0, len(model)) == model
    assert {c: len(store.state.maps[vid].chunk_extents(c)) for c in range(10)} == left
    store.close()


def test_fragment_budget_waits_for_a_tick_without_host_io(tmp_path):
    """Over the budget (but within twice it), compaction waits while the host writes or reads
    between ticks, and runs at the first tick after a quiet interval."""
    _, store, vid, model = _fragmented_pool(tmp_path, seed=8)
    clock = ManualClock()
    gc = Reclaimer(store, clock=clock, fragment_budget=50)
    _fragmented(store, vid, model, range(4, 6), 3, seed=9)  # the host writes before the tick
    assert gc.keep_fragment_budget() == 0 and gc.fragment_extents == 4 * 20 + 2 * 3
    for i in range(4):  # it keeps writing, then reading: nothing compacted, the work waits
        if i < 2:
            write(store, vid, model, 7 * MiB, b"y" * 10)
        else:
            assert store.read(vid, 7 * MiB, 10) == model[7 * MiB : 7 * MiB + 10]
        clock.advance(1.0)
        assert gc.keep_fragment_budget() == 0 and gc._fragment_work
    clock.advance(1.0)  # a quiet second
    assert gc.keep_fragment_budget() > 0
    assert store.read(vid, 0, len(model)) == model
    store.close()


def test_fragment_budget_compacts_under_host_io_over_twice_the_budget(tmp_path):
    """Over HARD_FACTOR times the budget the maps are not left to grow while the host keeps
    writing: the work found goes on in busy ticks too, down to the budget's low water."""
    _, store, vid, model = _fragmented_pool(tmp_path, seed=12)  # 4 chunks of 20 extents
    clock = ManualClock()
    gc = Reclaimer(store, clock=clock, fragment_budget=(4 * 20 - 1) // HARD_FACTOR)
    write(store, vid, model, 7 * MiB, b"y" * 10)
    cs = store.sb.chunk_size
    moved = gc.keep_fragment_budget()  # the host wrote since the last tick
    assert moved >= cs and store.stats.compacted_bytes == moved
    while gc._fragment_work:
        write(store, vid, model, 7 * MiB, b"z" * 10)
        clock.advance(1.0)
        moved += gc.keep_fragment_budget()
    clock.advance(gc.fragment_interval)
    write(store, vid, model, 7 * MiB, b"w" * 10)
    gc.keep_fragment_budget()
    assert gc.fragment_extents <= int(gc.fragment_budget * fragments.LOW_WATER) + 1
    assert store.read(vid, 0, len(model)) == model
    store.close()


def test_fragment_budget_work_survives_a_shrink_and_a_delete(tmp_path):
    """Chunks picked at a count and compacted at a later tick may lie past the end of a volume
    shrunk meanwhile, or belong to a deleted one: they are skipped, and the rest compacted."""
    _, store, vid, model = _fragmented_pool(tmp_path, seed=10)  # chunks 0-3 of 512 KiB fragmented
    other = store.create_volume("w", 8 * MiB).id
    _fragmented(store, other, bytearray(8 * MiB), range(0, 2), 20, seed=11)
    clock = ManualClock()
    gc = Reclaimer(store, clock=clock, fragment_budget=10, fragment_hard=10_000)
    write(store, vid, model, 0, b"z")  # a host write: this tick counts and picks, but waits
    assert gc.keep_fragment_budget() == 0 and len(gc._fragment_work) == 6
    end = store.sb.chunk_size + 4096
    store.resize_volume("v", end, allow_shrink=True)  # chunk 1 is cut, chunks 2-3 are gone
    store.delete_volume("w")
    clock.advance(1.0)
    assert gc.keep_fragment_budget() == 0  # the shrink's trim and the delete changed data: a busy tick
    clock.advance(1.0)
    assert gc.keep_fragment_budget() == end and gc._fragment_work == []
    assert [len(store.state.maps[vid].chunk_extents(c)) for c in range(2)] == [1, 1]
    assert store.read(vid, 0, end) == bytes(model[:end])
    store.close()


@pytest.mark.no_pool("fragments.pick on a Census: pure logic")
def test_fragment_pick_waits_for_the_budget_then_goes_to_low_water():
    """Nothing is picked within the budget, even above the low-water mark; over it, the chunks
    with most extents go first until the count would reach the low-water mark."""
    c = fragments.Census(extents=90, candidates=[(5, 1, 7), (30, 1, 3), (20, 2, 9), (1, 1, 4)])
    assert fragments.pick(c, 100) == [] and fragments.pick(c, 90) == []
    assert fragments.pick(c, 89) == [(1, 3)]  # low water 66: 90 - 29 = 61
    assert fragments.pick(c, 40) == [(1, 3), (2, 9), (1, 7)]  # low water 30, never reached
    assert fragments.pick(fragments.Census(extents=10, candidates=[(1, 1, 1)]), 0) == []  # one extent frees nothing


def test_fragment_budget_leaves_chunks_a_snapshot_shares(tmp_path):
    """Chunks whose leaf a snapshot shares are never compacted for the budget (it would copy the
    leaf and free nothing), and nothing is written while the count is within the budget."""
    _, store, vid, model = _fragmented_pool(tmp_path, seed=7)
    clock = ManualClock()
    roomy = Reclaimer(store, clock=clock, fragment_budget=10_000)
    assert roomy.keep_fragment_budget() == 0 and roomy.fragment_extents == 4 * 20
    snapshots.create(store, "v", "s")
    tight = Reclaimer(store, clock=clock, fragment_budget=10)
    assert tight.keep_fragment_budget() == 0
    assert tight.fragment_extents == 4 * 20  # the snapshot's lists, counted once with the volume's
    assert [len(store.state.maps[vid].chunk_extents(c)) for c in range(4)] == [20] * 4
    # A write copies the leaf, but the copy still shares the lists with the snapshot.
    write(store, vid, model, 5 * MiB, b"x" * 100)
    clock.advance(60.0)
    tight.keep_fragment_budget()  # a tick with a host write since the last: counts only
    assert tight.keep_fragment_budget() == 0 and tight._fragment_work == []
    # Once the snapshot is gone, the lists are the volume's alone, and compacted.
    snapshots.delete(store, "v", "s")
    clock.advance(60.0)
    assert tight.keep_fragment_budget() == 4 * store.sb.chunk_size
    assert [len(store.state.maps[vid].chunk_extents(c)) for c in range(4)] == [1] * 4
    assert store.read(vid, 0, len(model)) == model
    store.close()


# -- journal consumers -----------------------------------------------------------------------

def test_consumer_reads_records_in_order_and_resumes(tmp_path):
    pool = make_pool(tmp_path, compress="lz4")
    store = Store.open(pool)
    store.consumers.register("backup", store.journal.tail())
    with pytest.raises(AlreadyExists):
        store.consumers.register("backup", (1, 0))
    a = os.urandom(5000)
    b = os.urandom(MAX_RECORD + 1000)
    c = b"c" * 70_000
    vid = store.create_volume("v", 16 * MiB).id
    store.write(vid, 100, a)
    store.write(vid, 5 * MiB + 1, b)  # two records
    store.trim(vid, 150, 50)
    wid = store.create_volume("w", MiB).id
    store.write(wid, 4096, c)
    store.sync()
    expect = [
        ("volume", 0, vid, 0, None),
        ("write", 1, vid, 100, a),
        ("write", 2, vid, 5 * MiB + 1, b[:MAX_RECORD]),
        ("write", 3, vid, 5 * MiB + 1 + MAX_RECORD, b[MAX_RECORD:]),
        ("trim", 4, vid, 150, b""),
        ("volume", 0, wid, 0, None),
        ("write", 5, wid, 4096, c),
    ]
    got = list(read_records(store, "backup"))
    assert [(e.kind, e.seq, e.volume, e.offset) for e in got] == [x[:4] for x in expect]
    for e, (kind, _seq, _vol, _off, data) in zip(got, expect, strict=True):
        if kind == "write":
            assert e.data == data and e.length == len(data)
    assert got[4].length == 50
    event = json.loads(got[0].data)
    assert event | {"created": 0} == {"op": "create", "id": vid, "name": "v", "size": 16 * MiB, "group": 0,
                                      "created": 0}
    assert json.loads(got[5].data)["name"] == "w"
    positions = [e.next_position for e in got]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert positions[-1] == store.journal.tail()
    assert [e.kind for e in read_records(store, "backup", limit=3)] == ["volume", "write", "write"]

    # Not yet durable: invisible unless asked for.
    store.write(vid, 0, b"late")
    assert len(list(read_records(store, "backup"))) == len(expect)
    assert list(read_records(store, "backup", durable_only=False))[-1].data == b"late"
    # A GC relocation is not a host-visible change.
    pieces = store.state.maps[vid].lookup(0, store.sb.chunk_size)
    assert store.compact(vid, 0, store.read(vid, 0, store.sb.chunk_size), pieces)
    store.sync()
    assert [e.kind for e in read_records(store, "backup")][len(expect):] == ["write"]

    store.consumers.commit("backup", got[3].next_position)
    store.consumers.commit("backup", got[1].next_position)  # never moves backwards
    assert store.consumers.position("backup") == got[3].next_position
    store.close()

    store = Store.open(pool)
    assert store.consumers.position("backup") == got[3].next_position
    store.write(wid, 0, b"new")
    store.sync()
    rest = list(read_records(store, "backup"))
    assert [(e.kind, e.seq, e.offset) for e in rest] == [
        ("trim", 4, 150), ("volume", 0, 0), ("write", 5, 4096), ("write", 6, 0), ("write", 7, 0)]
    assert rest[-2].data == b"late" and rest[-1].data == b"new" and rest[-1].volume == wid
    store.consumers.unregister("backup")
    with pytest.raises(NotFound):
        list(read_records(store, "backup"))
    store.close()


@pytest.mark.parametrize("encrypt", [False, True])
def test_consumer_decodes_encrypted_records(tmp_path, encrypt):
    pool = make_pool(tmp_path, encrypt=encrypt, compress="lz4")
    store = Store.open(pool)
    vid = store.create_volume("v", 4 * MiB).id
    store.consumers.register("r", store.journal.tail())
    data = os.urandom(100_000) + bytes(200_000) + b"xyz" * 50_000
    store.write(vid, 12345, data)
    store.sync()
    (entry,) = read_records(store, "r")
    assert entry.kind == "write" and entry.offset == 12345 and entry.data == data
    store.close()


def test_segments_unread_by_a_consumer_are_kept(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 8 * MiB).id
    store.consumers.register("slow", store.journal.tail())
    assert store.journal.current_segno == 1
    store.write(vid, 0, os.urandom(2 * MiB))
    store.trim(vid, 0, 8 * MiB)  # segment 1 holds no live data now
    store.close()
    store = Store.open(pool)
    assert store.journal.current_segno == 2
    store.write(vid, 0, b"in segment two")
    store.checkpoint()
    assert 1 not in store.state.live and store.ckpt_position[0] == 2
    assert seg_exists(pool, 1), "a segment the consumer has not read was deleted"
    entries = list(read_records(store, "slow"))
    assert [e.kind for e in entries] == ["write", "trim", "write"]
    assert entries[-1].data == b"in segment two"
    store.consumers.commit("slow", entries[0].next_position)  # the trim after it is unread
    store.checkpoint()
    assert seg_exists(pool, 1)
    assert entries[1].next_position == (2, SEGMENT_HEADER_SIZE)  # segment 1's last record: read whole
    store.consumers.commit("slow", entries[1].next_position)
    store.checkpoint()
    assert not seg_exists(pool, 1)
    store.close()


def test_segments_without_live_data_are_deleted_without_consumers(tmp_path):
    """The control case for the test above: the same history without a consumer."""
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 8 * MiB).id
    store.write(vid, 0, os.urandom(2 * MiB))
    store.trim(vid, 0, 8 * MiB)
    store.close()
    store = Store.open(pool)
    store.write(vid, 0, b"in segment two")
    store.checkpoint()
    store.checkpoint()  # segment 1 goes once both checkpoint copies lie past it
    assert not seg_exists(pool, 1)
    assert store.journal.segments() == [2]
    store.close()


def test_consumer_at_start_of_pool_reads_everything_after_reopen(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    store.consumers.register("all", (store.journal.current_segno, SEGMENT_HEADER_SIZE))
    vid = store.create_volume("v", MiB).id
    store.write(vid, 0, b"one")
    store.journal.close()  # crash
    store = Store.open(pool)
    store.write(vid, 3, b"two")
    store.sync()
    got = list(read_records(store, "all"))
    assert [(e.kind, e.data) for e in got[1:]] == [("write", b"one"), ("write", b"two")]
    assert got[-1].next_position == store.journal.tail()
    assert seg_exists(pool, 1)  # recovery's checkpoint kept what the consumer has not read
    store.close()


# -- the maintenance tick --------------------------------------------------------------------

def test_tick_checkpoints_on_schedule(tmp_path):
    clock = ManualClock()
    pool = make_pool(tmp_path)
    store = Store.open(pool, clock=clock)
    gc = Reclaimer(store, clock=clock, checkpoint_interval=60.0, checkpoint_bytes=8 * MiB)
    vid = store.create_volume("v", 16 * MiB).id
    store.write(vid, 0, b"x" * 5000)
    gen, count = store.ckpt_generation, store.stats.checkpoints
    assert store.journal.dirty()
    gc.tick()
    assert not store.journal.dirty()  # the commit part of the tick
    assert (store.ckpt_generation, store.stats.checkpoints) == (gen, count)
    clock.advance(59)
    gc.tick()
    assert store.ckpt_generation == gen
    clock.advance(1.5)
    gc.tick()
    assert (store.ckpt_generation, store.stats.checkpoints) == (gen + 1, count + 1)
    assert store.ckpt_position == store.journal.tail()
    gc.tick()
    clock.advance(120)
    gc.tick()  # nothing appended, but the older copy lags: one more checkpoint moves it up
    assert store.ckpt_generation == gen + 2 and store.ckpt_older == store.ckpt_position
    clock.advance(120)
    gc.tick()  # nothing appended since, both copies current: no checkpoint however long it has been
    assert store.ckpt_generation == gen + 2
    store.write(vid, 0, b"y")
    gc.tick()  # the interval has passed since the last checkpoint
    assert store.ckpt_generation == gen + 3
    store.write(vid, 4096, b"z")
    gc.tick()
    assert store.ckpt_generation == gen + 3
    # Enough appended bytes trigger a checkpoint without waiting.
    store.write(vid, MiB, os.urandom(8 * MiB))
    gc.tick()
    assert store.ckpt_generation == gen + 4
    store.close()


def test_a_failing_maintenance_step_holds_back_neither_commits_nor_later_steps(tmp_path, caplog):
    """A bug in GC (an injected RuntimeError) and an I/O error in a checkpoint are recorded,
    and every other step of the tick still runs: the commit before GC, and the fragment
    budget's compaction after it. The log hears of each failure once, with a traceback for
    the bug, and again when it clears; the status text names every failing step."""
    clock = ManualClock()
    faults = Faults("maintenance.gc=bug@1+")
    pool = make_pool(tmp_path)
    store = Store.open(pool, clock=clock, faults=faults)
    vid = store.create_volume("v", 8 * MiB).id
    model = bytearray(8 * MiB)
    _fragmented(store, vid, model, range(0, 4), 20, seed=3)
    gc = Reclaimer(store, clock=clock, checkpoint_interval=60.0, fragment_budget=10)
    gc.budget_activity.look()  # a quiet tick: the fragment budget may compact
    syncs = store.journal.syncs
    bug = "gc: internal error RuntimeError: injected bug at maintenance.gc"

    def logged(text: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if text in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="vstor.reclaim"):
        assert gc.run_tick() is False
        assert store.journal.syncs == syncs + 1  # committed before GC failed
        assert gc.fragment_extents == 80 and store.stats.relocated_bytes > 0  # ran after GC
        assert store.stats.compacted_bytes == store.stats.relocated_bytes  # compactions, no GC move
        assert gc.last_error == bug and store.stats.maintenance_errors == 1
        assert len(logged("injected bug")) == 1 and logged("injected bug")[0].exc_info

        write(store, vid, model, 5 * MiB, b"w" * 5000)
        faults.arm("checkpoint", "eio")
        clock.advance(61)  # a checkpoint is due, and fails; GC fails again
        gen = store.ckpt_generation
        assert gc.run_tick() is False
        assert not store.journal.dirty() and store.ckpt_generation == gen
        assert gc.last_error == f"checkpoint: [Errno 5] injected EIO at checkpoint; {bug}"
        assert len(logged("injected EIO")) == 1 and not logged("injected EIO")[0].exc_info
        assert gc.run_tick() is False  # the checkpoint now runs; the bug in GC stays
        assert store.ckpt_generation == gen + 1 and gc.last_error == bug
        assert len(logged("recovered from [Errno 5]")) == 1
        assert gc.run_tick() is False
        assert len(logged("injected bug")) == 1  # counted every tick, logged once
        assert store.stats.maintenance_errors == 4

        store.journal.failed = "test: the journal failed"  # nothing runs; not a recovery either
        assert gc.run_tick() is False and gc.last_error == bug
        assert store.stats.maintenance_errors == 4 and not logged("recovered from internal error")
        store.journal.failed = None

        faults.disarm()
        assert gc.run_tick() is True and gc.last_error == ""
        assert len(logged("recovered from internal error")) == 1
    faults.arm("maintenance.commit", "bug")
    with pytest.raises(StepsFailed):  # a bare tick, as tests call it, still raises
        gc.tick()
    # A final checkpoint that fails still leaves the journal synced and closed, and the next
    # open replays what the last checkpoint does not hold.
    write(store, vid, model, 6 * MiB, b"z" * 3000)
    faults.arm("checkpoint", "eio")
    with pytest.raises(OSError, match="injected EIO at checkpoint"):
        store.close()
    store = Store.open(pool)
    assert store.recovery["records"] >= 1
    assert store.read(vid, 0, len(model)) == model
    store.close()


def test_the_maintenance_thread_survives_a_bug_and_keeps_committing(tmp_path):
    """The real loop, on the real clock with a 10 ms interval: GC raising on every tick
    neither ends the thread nor stops the commits."""
    faults = Faults("maintenance.gc=bug@1+")
    store = Store.open(make_pool(tmp_path), faults=faults)
    vid = store.create_volume("v", 8 * MiB).id
    gc = Reclaimer(store, commit_interval=0.01)
    gc.start()
    try:
        for i in range(3):
            store.write(vid, i * MiB, b"d" * 4096)
            deadline = time.monotonic() + 10
            syncs = store.journal.syncs
            while store.journal.syncs == syncs and time.monotonic() < deadline:
                time.sleep(0.005)
            assert store.journal.syncs > syncs and not store.journal.dirty()
        assert gc._thread is not None and gc._thread.is_alive()
        assert store.stats.maintenance_errors >= 3 and gc.last_error.startswith("gc: internal error")
    finally:
        gc.stop()
        store.close()


def test_gc_rewrites_only_live_data_not_whole_chunks(tmp_path):
    """Scattered 4 KiB writes leave each segment with a few live fragments in many chunks; GC
    must move those fragments, not the 512 KiB chunks around them (write amplification)."""
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    cs = store.sb.chunk_size
    vid = store.create_volume("v", 256 * MiB).id
    model = bytearray(256 * MiB)
    rng = random.Random(5)
    for _round in range(6):  # overwrite the same scattered blocks: old segments die
        for c in range(0, 256 * MiB // cs, 2):
            write(store, vid, model, c * cs + rng.randrange(0, cs // 4096) * 4096, rng.randbytes(4096))
        for c in range(1, 256 * MiB // cs, 2):
            write(store, vid, model, c * cs + 4096, rng.randbytes(4096 * 16))
    gc = Reclaimer(store, min_dead=0.3)
    targets = gc.candidates()
    assert targets
    live = sum(store.state.live.get(s, 0) for s in targets)
    moved = gc.collect(targets)
    assert 0 < moved <= live, (moved, live)  # at most what was live there, never whole chunks
    store.checkpoint()
    assert store.read(vid, 0, len(model)) == model


def test_gc_work_left_for_a_segment_deleted_meanwhile_is_skipped(tmp_path):
    """A budgeted pass leaves work for later ticks. If host writes then overwrite all that was
    live in its segment and a checkpoint deletes the segment, that work is moot: the next pass
    skips it, rather than failing on the missing segment as if the pool were damaged."""
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 64 * MiB).id
    model = bytearray(64 * MiB)
    for off in range(0, 40 * MiB, MiB):  # segment 1 holds about [0, 16) MiB
        write(store, vid, model, off, os.urandom(MiB))
    for m in range(0, 16, 2):  # half of segment 1 dead: a candidate
        write(store, vid, model, m * MiB, os.urandom(MiB))
    gc = Reclaimer(store, min_dead=0.4)
    assert 1 in gc.candidates()
    assert 0 < gc.collect(max_bytes=MiB) < store.state.live[1]  # work left for later
    for m in range(16):  # the rest of segment 1 overwritten by the host
        write(store, vid, model, m * MiB, os.urandom(MiB))
    assert store.state.live.get(1, 0) == 0
    store.checkpoint()
    store.checkpoint()  # segment 1 goes once both checkpoint copies lie past it
    assert not seg_exists(pool, 1)
    gc.collect()  # the moves left for segment 1 are skipped
    assert store.read(vid, 0, len(model)) == model
    store.close()
