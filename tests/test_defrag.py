"""Defragmentation (defrag.py): the idle sweep and read-triggered rewrites put an aged
volume's windows back in logical order, yield to host I/O, never duplicate what a snapshot
or clone shares, and survive a crash at every point where they write."""

from __future__ import annotations

import os
import random
import textwrap

import pytest
from crashkit import CHILD_PRELUDE, pool_check_passes, run_killed
from poolkit import MiB, make_pool

from vstor.store.catalog import snapshots
from vstor.store.maintenance.defrag import WINDOW, Defragmenter
from vstor.store.store import Store

pytestmark = pytest.mark.usefixtures("pool_backend")  # each test on a local and a RADOS pool (tests/poolsite.py)

SIZE = 8 * MiB
TICK = 60.0  # seconds of work per tick: the tests count bytes moved, which a busy machine or a RADOS
# pool must not cut short (the budget itself is the daemon's, 0.5 s)


def _age(st: Store, vid: int, model: bytearray, seed: int, writes: int = 600) -> None:
    rng = random.Random(seed)
    for _ in range(writes):
        off = rng.randrange(SIZE // 4096) * 4096
        data = rng.randbytes(4096)
        st.write(vid, off, data)
        model[off : off + 4096] = data


def _aged(tmp_path, seed: int = 1) -> tuple[str, Store, int, bytearray]:
    """A pool with an 8 MiB volume written in 1 MiB records, then scattered by 4 KiB writes."""
    pool = make_pool(tmp_path)
    st = Store.open(pool)
    vid = st.create_volume("v", SIZE).id
    model = bytearray(os.urandom(SIZE))
    for off in range(0, SIZE, MiB):
        st.write(vid, off, model[off : off + MiB])
    _age(st, vid, model, seed)
    return pool, st, vid, model


def _pieces(st: Store, vid: int) -> list[int]:
    vm = st.state.maps[vid]
    return [len(vm.lookup(w, w + WINDOW)) for w in range(0, SIZE, WINDOW)]


def test_idle_sweep_puts_an_aged_volume_in_logical_order(tmp_path):
    pool, st, vid, model = _aged(tmp_path)
    assert min(_pieces(st, vid)) > 20
    dg = Defragmenter(st, scan_windows_per_tick=3, seconds_per_tick=TICK)
    assert dg.tick() == 3 * WINDOW  # within its budget: three windows a tick
    assert _pieces(st, vid)[:3] == [1, 1, 1] and min(_pieces(st, vid)[3:]) > 20
    while dg.tick():
        pass
    assert _pieces(st, vid) == [1] * (SIZE // WINDOW)
    assert st.stats.defrag_bytes == SIZE and st.stats.defrag_windows == SIZE // WINDOW
    locs = [st.state.maps[vid].lookup(w, w + 1)[0][2] for w in range(0, SIZE, WINDOW)]
    assert locs == sorted(locs)  # consecutive windows follow each other in the journal
    assert st.read(vid, 0, SIZE) == model
    assert dg.tick() == 0 and dg.state == "waiting for host I/O to stop"  # the read above
    assert [dg.tick() for _ in range(4)] == [0] * 4  # a sweep that finds nothing, three windows a tick
    assert dg.state.startswith("idle")  # and no other until the host writes
    st.sync()
    st.journal.close()  # as after kill -9: the rewrites are replayed from the journal
    st = Store.open(pool)
    assert st.read(vid, 0, SIZE) == model and _pieces(st, vid) == [1] * (SIZE // WINDOW)
    st.close()


def test_defrag_yields_to_host_io(tmp_path):
    _, st, vid, model = _aged(tmp_path)
    dg = Defragmenter(st, seconds_per_tick=TICK)
    st.write(vid, 0, model[:4096])
    assert dg.tick() == 0 and dg.state == "waiting for host writes to stop"
    st.read(vid, 5 * MiB, 4096)  # reads alone hold the sweep back too
    assert dg.tick() == 0 and dg.state == "waiting for host I/O to stop"
    assert st.stats.defrag_bytes == 0
    assert dg.tick() == SIZE  # a tick with no host I/O since the last one
    assert st.read(vid, 0, SIZE) == model
    st.close()


def test_windows_a_read_found_scattered_are_rewritten_first(tmp_path):
    _, st, vid, model = _aged(tmp_path)
    dg = Defragmenter(st, seconds_per_tick=TICK)
    st.read(vid, 4096, 4096)  # one piece: no hint
    assert st.stats.defrag_hints == 0
    assert st.read(vid, 5 * MiB, MiB) == model[5 * MiB : 6 * MiB]
    assert st.stats.defrag_hints == 1 and dg.describe()["hints_pending"] == 1
    assert dg.tick() == 0  # the host read since the last tick: by default nothing then
    assert dg.tick() == SIZE and dg.describe()["hints_pending"] == 0  # idle: the hint, then the sweep
    locs = [st.state.maps[vid].lookup(w, w + 1)[0][2] for w in range(0, SIZE, WINDOW)]
    assert min(locs) == locs[5]  # the hinted window went first
    assert st.read(vid, 0, SIZE) == model
    st.close()


def test_busy_hint_bytes_rewrites_behind_a_reader(tmp_path):
    """WAFL-style, when asked: the hinted windows are rewritten while the host goes on reading."""
    _, st, vid, model = _aged(tmp_path)
    dg = Defragmenter(st, busy_hint_bytes=MiB, seconds_per_tick=TICK)
    st.read(vid, 2 * MiB, 2 * MiB)
    assert dg.tick() == MiB and dg.describe()["hints_pending"] == 1  # within the budget
    st.read(vid, 0, 4096)
    assert dg.tick() == MiB
    assert _pieces(st, vid)[2:4] == [1, 1] and min(_pieces(st, vid)[:2] + _pieces(st, vid)[4:]) > 20
    assert st.read(vid, 0, SIZE) == model
    st.close()


def test_defrag_never_duplicates_what_a_snapshot_shares(tmp_path):
    _, st, vid, model = _aged(tmp_path)
    snapshots.create(st, "v", "s")
    _age(st, vid, model, seed=2, writes=20)  # after the snapshot: the leaves are copied
    dg = Defragmenter(st, seconds_per_tick=TICK)
    journal = st.journal.appended_bytes
    dg.tick()
    dg.tick()
    assert st.stats.defrag_bytes == 0 and st.journal.appended_bytes == journal
    assert st.stats.defrag_shared_skipped == SIZE
    sid = snapshots.get(st, "v", "s").id
    (clone_name,) = snapshots.clone(st, "v", "s", "c-")
    snapshots.delete(st, "v", "s")  # the clone still shares the records
    dg.tick()
    assert st.stats.defrag_bytes == 0
    clone = st.volume(clone_name).id
    st.trim(clone, 0, SIZE)  # the clone lets go of them: the volume is alone now
    _age(st, vid, model, seed=3, writes=1)
    dg.tick()
    assert dg.tick() == SIZE
    assert st.read(vid, 0, SIZE) == model and sid not in st.state.catalog.snaps
    st.close()


CHILD = CHILD_PRELUDE + textwrap.dedent("""
    from test_defrag import SIZE, _age
    from vstor.store.maintenance.defrag import Defragmenter
    vid = st.create_volume("v", SIZE).id
    model = bytearray(random.Random(9).randbytes(SIZE))
    for off in range(0, SIZE, 1 << 20):
        st.write(vid, off, model[off : off + (1 << 20)])
    _age(st, vid, model, seed=4)
    st.sync()  # every host write acknowledged
    with open(pool + ".model", "wb") as f:
        f.write(model)
        f.flush()
        os.fsync(f.fileno())
    arm()
    Defragmenter(st, seconds_per_tick=60.0).tick()
    st.sync()
    print("survived")
""")


def _crash(tmp_path, spec: str) -> None:
    pool = make_pool(tmp_path)
    run_killed(CHILD.format(tests=os.path.dirname(__file__)), pool, spec)
    with open(pool + ".model", "rb") as f:
        model = f.read()
    st = Store.open(pool)
    assert st.read(st.volume("v").id, 0, SIZE) == model
    st.close()
    pool_check_passes(pool)


def test_crash_before_a_defrag_rewrite(tmp_path):
    """SIGKILL between reading a window and appending its rewrite (the third window)."""
    _crash(tmp_path, "defrag.rewrite=kill@3")


def test_crash_tearing_a_defrag_record(tmp_path):
    """SIGKILL halfway through writing the fourth rewrite record: a torn tail, cut at replay."""
    _crash(tmp_path, "journal.write=torn@4")


def test_defrag_waits_while_the_pool_is_nearly_full(tmp_path):
    _, st, vid, model = _aged(tmp_path)
    dg = Defragmenter(st, seconds_per_tick=TICK)
    reserve = st.space.reserve
    st.space.reserve = st.space.free_bytes()  # as if the filesystem under the pool were that full
    assert dg.tick() == 0 and dg.state == "paused: the pool is nearly full"
    st.space.reserve = reserve
    assert dg.tick() == SIZE
    assert st.read(vid, 0, SIZE) == model
    st.close()
