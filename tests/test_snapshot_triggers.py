"""Snapshot policies that fire on bytes written (--after-written), in process with the injected
clock: the count through the store's write path, the debounce, pruning, and the baseline
across a clean close, a crash and an old checkpoint without the count."""

from __future__ import annotations

import os

import pytest
from poolkit import MiB, make_pool

from vstor.clock import ManualClock
from vstor.errors import UsageError
from vstor.store.catalog import snapshots
from vstor.store.catalog.groups import Catalog, Policy
from vstor.store.catalog.policy import written_since
from vstor.store.maintenance.reclaim import Reclaimer
from vstor.store.state import PoolState
from vstor.store.store import Store

pytestmark = pytest.mark.usefixtures("pool_backend")  # each test on a local and a RADOS pool (tests/poolsite.py)

KiB = 1 << 10


def _group(store: Store) -> tuple[int, int]:
    a, b = store.create_volume("a", 16 * MiB).id, store.create_volume("b", 16 * MiB).id
    store.event(lambda st: st.catalog.make_group_create(st.table, "g", ["a", "b"], 0.0))
    return a, b


def _autos(store: Store) -> list:
    return [s for s in store.state.catalog.snapshots_of("group", 1) if s.auto]


def _since(store: Store) -> int:
    with store._lock:
        st = store.state
        pol = st.catalog.policies["group:1"]
        members = st.catalog.members(st.table, "group", 1)
        return written_since(pol, st.catalog.snapshots_of("group", 1), st.written, members)


def _open(pool: str, clock: ManualClock) -> tuple[Store, Reclaimer]:
    store = Store.open(pool, clock=clock)
    return store, Reclaimer(store, clock=clock, spawn=lambda work, name: work())


def test_threshold_snapshot_fires_once_debounces_prunes_and_keeps_its_baseline(tmp_path):
    clock = ManualClock()
    pool = make_pool(tmp_path)
    store, gc = _open(pool, clock)
    a, b = _group(store)
    store.write(a, 0, os.urandom(3 * MiB))  # before the policy: not counted against it
    snapshots.set_policy(store, "g", 0, keep_last=2, keep_daily=0, after_written=MiB, min_interval=60)
    gc.tick()
    assert _autos(store) == [] and _since(store) == 0  # a threshold-only policy takes none at once

    store.write(a, 0, os.urandom(512 * KiB))
    store.write(b, MiB, os.urandom(256 * KiB))
    store.trim(a, 8 * MiB, 64 * KiB)  # unmapped: journals nothing, counts nothing
    gc.tick()
    assert _autos(store) == [] and _since(store) == 768 * KiB

    # A crash (no checkpoint): replay counts the same records again; the baseline is journaled.
    store.journal.sync()
    store.close(checkpoint=False)
    store, gc = _open(pool, clock)
    assert _since(store) == 768 * KiB
    clock.advance(5)
    store.write(a, 2 * MiB, os.urandom(256 * KiB))  # the threshold: 1 MiB since the policy was set
    gc.tick()
    (first,) = _autos(store)
    assert first.created == clock.time() and first.name.startswith("auto-")
    assert _since(store) == 0
    gc.tick()
    assert len(_autos(store)) == 1  # nothing written since: nothing more

    # A heavy writer: at most one threshold snapshot per min_interval (60 s).
    store.write(a, 0, os.urandom(2 * MiB))
    clock.advance(59)
    gc.tick()
    assert len(_autos(store)) == 1, "debounce: 59 s after the last one"
    clock.advance(1)
    gc.tick()
    assert len(_autos(store)) == 2
    start = store.state.catalog.next_sid
    taken = []
    for _ in range(30):  # 10 s steps, writing 2 MiB each: one snapshot per 60 s, pruned to keep_last 2
        store.write(b, 0, os.urandom(2 * MiB))
        clock.advance(10)
        gc.tick()
        taken.append(store.state.catalog.next_sid)
    assert [n - start for n in taken] == [i // 6 for i in range(1, 31)]  # 300 s: one at each 60 s
    assert len(_autos(store)) == 2  # retention applies to threshold snapshots as to timed ones

    # A manual snapshot is a snapshot too: the count starts again from it.
    store.write(a, 0, os.urandom(512 * KiB))
    snapshots.create(store, "g", "by-hand")
    assert _since(store) == 0

    # A clean close (checkpoint holds the count), then a crash after more writes.
    store.write(a, 0, os.urandom(700 * KiB))
    before = dict(store.state.written)
    store.close()
    store, gc = _open(pool, clock)
    assert dict(store.state.written) == before and _since(store) == 700 * KiB
    store.write(b, 0, os.urandom(200 * KiB))
    store.journal.sync()
    store.close(checkpoint=False)
    store, gc = _open(pool, clock)
    assert _since(store) == 900 * KiB
    clock.advance(60)
    n = store.state.catalog.next_sid
    store.write(b, 0, os.urandom(124 * KiB))
    gc.tick()
    assert store.state.catalog.next_sid == n + 1 and _since(store) == 0
    store.close()


def test_time_schedule_and_threshold_together(tmp_path):
    clock = ManualClock()
    store, gc = _open(make_pool(tmp_path), clock)
    a, _b = _group(store)
    snapshots.set_policy(store, "g", 900, keep_last=10, keep_daily=0, after_written=MiB, min_interval=120)
    gc.tick()
    assert len(_autos(store)) == 1  # the time schedule: none yet, so one at once
    clock.advance(300)
    store.write(a, 0, os.urandom(MiB))
    gc.tick()
    assert len(_autos(store)) == 2  # the threshold, before the schedule's 900 s
    clock.advance(899)
    gc.tick()
    assert len(_autos(store)) == 2  # the schedule counts from the newest automatic snapshot
    clock.advance(1)
    gc.tick()
    assert len(_autos(store)) == 3
    store.close()


def test_policy_validation_and_old_formats(tmp_path):
    store = Store.open(make_pool(tmp_path))
    _group(store)
    for kw, msg in [({"every": 0}, "--every .* or --after-written"),
                    ({"every": 30}, "at least 1m"),
                    ({"every": 0, "after_written": MiB, "min_interval": 0.5}, "--min-interval"),
                    ({"every": 0, "after_written": MiB, "hook_timeout": 0}, "--hook-timeout")]:
        every = kw.pop("every")
        with pytest.raises(UsageError, match=msg):
            snapshots.set_policy(store, "g", every, 1, 0, **kw)
    assert store.state.catalog.policies == {}
    # A policy event journaled before these fields, and a snapshot member without "written".
    cat = Catalog()
    cat.apply({"op": "group_create", "gid": 1, "name": "g"})
    cat.apply({"op": "policy_set", "owner": "group:1", "policy": {"every": 900, "keep_last": 2, "keep_daily": 0}})
    cat.apply({"op": "snap_create", "sid": 1, "name": "s", "kind": "group", "owner": 1, "owner_name": "g",
               "created": 1.0, "seq": 3, "members": [{"vid": 1, "name": "a", "size": MiB, "lineage": [1]}]})
    assert cat.policies["group:1"] == Policy(900, 2, 0)
    assert cat.snaps[1].members[0].written == 0
    assert Catalog.from_json(cat.to_json()) == cat
    # A checkpoint written before the count existed opens with the count at zero.
    meta = store.state.meta_json()
    del meta["written"]
    st = PoolState.from_checkpoint(store.sb.chunk_size, meta, store.state.maps_blob())
    assert dict(st.written) == {}
    store.close()
