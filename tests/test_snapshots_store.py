"""Consistency groups, snapshots, rollback and clones on an open Store (no FUSE, no daemon):
content isolation, exact cuts, replay, space accounting and reclamation, diffs, policies,
crash safety of catalog events and ``pool check``."""

from __future__ import annotations

import os
import random
from array import array
from datetime import UTC, datetime

import pytest
from poolkit import SEG, MiB, leaf_refs, make_pool, seg_cut, seg_exists, seg_flip, seg_list, seg_size

from vstor.clock import ManualClock
from vstor.errors import AlreadyExists, CorruptData, NotFound
from vstor.store.backend.stub import backend_for
from vstor.store.catalog import snapshots
from vstor.store.check import check_pool
from vstor.store.journal.consumers import read_records
from vstor.store.journal.format import MAX_RECORD, RECORD_HEADER_SIZE, loc_pos, loc_segno
from vstor.store.maintenance.reclaim import Reclaimer
from vstor.store.state import PoolState
from vstor.store.store import Store
from vstor.store.superblock import load_superblock

KiB = 1 << 10
pytestmark = pytest.mark.usefixtures("pool_backend")  # each test on a local and a RADOS pool (tests/poolsite.py)


# -- helpers -----------------------------------------------------------------------------------

def make_group(store: Store, names: list[str], size: int, group: str = "g") -> list[int]:
    vids = [store.create_volume(n, size).id for n in names]
    store.event(lambda st: st.catalog.make_group_create(st.table, group, list(names), 0.0))
    return vids


def put(store: Store, vid: int, model: bytearray, off: int, data: bytes) -> None:
    store.write(vid, off, data)
    model[off : off + len(data)] = data


def trim(store: Store, vid: int, model: bytearray, off: int, n: int) -> None:
    store.trim(vid, off, n)
    end = min(off + n, len(model))
    model[off:end] = bytes(end - off)


def scribble(store: Store, vid: int, model: bytearray, rng: random.Random, n: int) -> None:
    """``n`` random writes and trims at odd offsets and sizes."""
    size = len(model)
    for _ in range(n):
        off = rng.randrange(size - 1)
        length = min(rng.randrange(1, 300 * KiB), size - off)
        if rng.random() < 0.25:
            trim(store, vid, model, off, length)
        else:
            put(store, vid, model, off, rng.randbytes(length))


def read_all(store: Store, vid: int, size: int, sid: int = 0) -> bytes:
    return store.read(vid, 0, size, sid=sid)


def check_contents(store: Store, live: dict[int, bytearray], snaps: dict[int, dict[int, bytes]]) -> None:
    for vid, model in live.items():
        assert read_all(store, vid, len(model)) == model, f"volume {vid}"
    for sid, members in snaps.items():
        for vid, model in members.items():
            assert read_all(store, vid, len(model), sid) == model, f"snapshot {sid} volume {vid}"


def referenced(state: PoolState) -> dict[int, int]:
    """Bytes per segment referenced by every distinct leaf object: what state.live must hold."""
    return leaf_refs(state.all_maps())


def assert_refcounts(store: Store) -> None:
    assert dict(store.state.live) == referenced(store.state)


def image(store: Store) -> dict:
    """Everything a user can see: volumes, snapshot images, listings and sizes."""
    vols = {v.name: (v.id, v.size, v.group, v.lineage, v.clone_of, store.read(v.id, 0, v.size))
            for v in store.volumes()}
    snaps = {(s.id, m.vid): store.read(m.vid, 0, m.size, sid=s.id)
             for s in store.state.catalog.snaps.values() for m in s.members}
    groups = {g.id: g.name for g in store.state.catalog.groups.values()}
    return {"volumes": vols, "snaps": snaps, "listing": snapshots.listing(store),
            "sizes": snapshots.sizes(store)[1], "groups": groups, "group_seq": dict(store.state.group_seq),
            "policies": dict(store.state.catalog.policies), "tree": sorted(snapshots.tree(store))}


def run_check(pool: str):
    store = Store(pool, load_superblock(pool), None)
    try:
        return check_pool(store)
    finally:
        store.journal.close()


def crash_reopen(store: Store, pool: str, **kw) -> Store:
    store.journal.sync()
    store.close(checkpoint=False)
    return Store.open(pool, **kw)


def reopen(store: Store, pool: str, **kw) -> Store:
    store.close()
    return Store.open(pool, **kw)


# -- 1. isolation ------------------------------------------------------------------------------

def test_snapshots_keep_their_own_content(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    size = 3 * MiB
    a, b = make_group(store, ["a", "b"], size)
    rng = random.Random(101)
    live = {a: bytearray(size), b: bytearray(size)}
    put(store, a, live[a], 0, rng.randbytes(size))
    put(store, b, live[b], 12345, rng.randbytes(MiB + 7))
    snaps: dict[int, dict[int, bytes]] = {}
    for i in range(5):
        zoff = 700 * KiB + 3 + i * 100 * KiB
        put(store, a, live[a], zoff, rng.randbytes(70 * KiB))
        sid = snapshots.create(store, "g", f"s{i}")["id"]
        snaps[sid] = {v: bytes(m) for v, m in live.items()}
        # an all-zero write over mapped data is a trim; the snapshot keeps the old bytes
        put(store, a, live[a], zoff, bytes(70 * KiB))
        assert read_all(store, a, size, sid)[zoff : zoff + 70 * KiB] == snaps[sid][a][zoff : zoff + 70 * KiB]
        for vid in (a, b):
            scribble(store, vid, live[vid], rng, 12)
        for vid in (a, b):
            assert read_all(store, vid, size) != snaps[sid][vid]
        check_contents(store, live, snaps)
        # odd sub-ranges of every snapshot
        for s, members in snaps.items():
            for vid, model in members.items():
                off = rng.randrange(size)
                n = rng.randrange(1, 200 * KiB)
                assert store.read(vid, off, n, sid=s) == model[off : off + n]
    # reads past the end of a snapshot image are cut like a volume's
    sid0 = min(snaps)
    assert store.read(a, size - 10, 100, sid=sid0) == snaps[sid0][a][-10:]
    assert_refcounts(store)
    store.close()


# -- 2. replay ---------------------------------------------------------------------------------

def test_replay_and_checkpoint_reproduce_snapshots_rollbacks_and_clones(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    size = 2 * MiB
    a, b = make_group(store, ["a", "b"], size)
    c = store.create_volume("c", MiB).id
    rng = random.Random(202)
    live = {a: bytearray(size), b: bytearray(size), c: bytearray(MiB)}
    snaps: dict[int, dict[int, bytes]] = {}

    def snap(owner: str, name: str) -> int:
        d = snapshots.create(store, owner, name)
        snaps[d["id"]] = {m["id"]: bytes(live[m["id"]]) for m in d["volumes"]}
        return d["id"]

    def churn(n: int = 6) -> None:
        for vid in list(live):
            scribble(store, vid, live[vid], rng, n)

    churn(10)
    s1 = snap("g", "s1")
    churn()
    s2 = snap("g", "s2")
    cs1 = snap("c", "cs1")
    churn()
    pre_name = snapshots.rollback(store, "g", "s1")["safety_snapshot"]
    pre = snapshots.get(store, "g", pre_name).id
    snaps[pre] = {a: bytes(live[a]), b: bytes(live[b])}
    live[a][:], live[b][:] = snaps[s1][a], snaps[s1][b]
    check_contents(store, live, snaps)
    churn()
    assert snapshots.clone(store, "g", "s2", "k") == ["k-a", "k-b"]
    ka, kb = store.volume("k-a").id, store.volume("k-b").id
    live[ka], live[kb] = bytearray(snaps[s2][a]), bytearray(snaps[s2][b])
    churn()
    snapshots.delete(store, "g", "s2")
    del snaps[s2]
    store.resize_volume("b", 3 * MiB)
    live[b].extend(bytes(MiB))
    put(store, b, live[b], 2 * MiB + 5, rng.randbytes(MiB - 10))
    s3 = snap("g", "s3")
    churn()
    snapshots.delete(store, "c", "cs1")
    del snaps[cs1]
    store.delete_volume("c")
    del live[c]
    check_contents(store, live, snaps)
    assert_refcounts(store)
    before = image(store)

    store = crash_reopen(store, pool)
    assert store.recovery["records"] > 0
    assert image(store) == before
    check_contents(store, live, snaps)
    assert_refcounts(store)

    # After a checkpoint: snapshot events replayed onto maps loaded from it.
    s4 = snap("g", "s4")
    churn()
    at_rollback = {a: bytes(live[a]), b: bytes(live[b])}
    pre2 = snapshots.get(store, "g", snapshots.rollback(store, "g", "s3")["safety_snapshot"]).id
    snaps[pre2] = at_rollback
    live[a][:], live[b][:] = snaps[s3][a], snaps[s3][b]
    assert store.volume("b").size == 3 * MiB
    check_contents(store, live, snaps)
    assert snapshots.clone(store, "g", "s4", "m") == ["m-a", "m-b"]
    live[store.volume("m-a").id] = bytearray(snaps[s4][a])
    live[store.volume("m-b").id] = bytearray(snaps[s4][b])
    churn(3)
    before = image(store)
    names = [(d["name"], d["seq"]) for d in snapshots.listing(store)]

    store = reopen(store, pool)
    assert store.recovery["records"] == 0
    assert image(store) == before
    assert [(d["name"], d["seq"]) for d in snapshots.listing(store)] == names
    check_contents(store, live, snaps)
    assert_refcounts(store)

    snapshots.delete(store, "g", "s1")
    del snaps[s1]
    snap("k-a", "ks")
    churn(3)
    before = image(store)
    store = crash_reopen(store, pool)
    assert image(store) == before
    check_contents(store, live, snaps)
    assert_refcounts(store)
    store.close()
    assert run_check(pool).clean


# -- 3. exact cuts -----------------------------------------------------------------------------

def records_for(mapped: bytearray, off: int, n: int, data: bytes | None) -> int:
    """How many journal records (group sequence numbers) a write or trim costs: one per
    MAX_RECORD piece, except that a trim (or an all-zero piece) over unmapped space costs none."""
    end = min(off + n, len(mapped))
    count = 0
    for start in range(off, end, MAX_RECORD):
        stop = min(start + MAX_RECORD, end)
        piece_zero = data is None or not any(data[start - off : stop - off])
        if not piece_zero or mapped.find(1, start, stop) != -1:
            count += 1
    return count


def test_snapshot_seq_is_the_exact_cut(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    solo = store.create_volume("solo", MiB).id
    store.write(solo, 0, b"s" * 100)
    size = 10 * MiB
    a, b = make_group(store, ["a", "b"], size)
    gid = store.volume("a").group
    assert gid != 0 and store.state.group_seq[gid] == 0
    store.consumers.register("cut", store.journal.tail())
    rng = random.Random(303)
    mapped = {a: bytearray(size), b: bytearray(size)}
    live = {a: bytearray(size), b: bytearray(size)}
    expected = 0

    def op(vid: int, off: int, n: int, kind: str) -> None:
        nonlocal expected
        if kind == "trim":
            expected += records_for(mapped[vid], off, n, None)
            trim(store, vid, live[vid], off, n)
            mapped[vid][off : off + n] = bytes(min(n, size - off))
        else:
            data = bytes(n) if kind == "zero" else rng.randbytes(n)
            expected += records_for(mapped[vid], off, n, data)
            put(store, vid, live[vid], off, data)
            mapped[vid][off : off + n] = bytes(n) if kind == "zero" else b"\x01" * n

    def random_ops(count: int) -> None:
        for _ in range(count):
            vid = rng.choice((a, b))
            kind = rng.choice(("write", "write", "write", "trim", "zero"))
            off = rng.randrange(size - 1)
            n = min(rng.randrange(1, 400 * KiB), size - off)
            op(vid, off, n, kind)
            store.write(solo, rng.randrange(MiB - 10), b"x" * 10)  # another group: costs no seq of g

    op(a, 3, MAX_RECORD + 1000, "write")  # two records
    op(b, MiB + 1, MAX_RECORD * 2 + 1, "write")  # three
    op(a, 9 * MiB, 4096, "zero")  # over unmapped space: nothing
    op(b, 0, MiB, "trim")  # nothing mapped there: nothing
    assert expected == 5 == store.state.group_seq[gid]
    op(a, 0, size, "trim")  # pieces [0, 4M) and [4M, 8M) hold data, [8M, 10M) does not: two records
    assert expected == 7
    op(b, 4 * MiB, 6 * MiB, "trim")  # [4M, 8M) and [8M, 10M): two
    assert expected == 9 == store.state.group_seq[gid]
    random_ops(40)
    assert store.state.group_seq[gid] == expected
    d1 = snapshots.create(store, "g", "one")
    assert d1["seq"] == expected
    cut1 = {v: bytes(m) for v, m in live.items()}
    random_ops(25)
    assert store.state.group_seq[gid] == expected
    va = snapshots.create(store, "a", "only-a")  # a volume snapshot: the seq of the volume's group
    assert va["seq"] == expected
    cut_a = bytes(live[a])
    random_ops(10)
    solo_snap = snapshots.create(store, "solo", "so")
    assert solo_snap["seq"] == store.state.group_seq[0]
    check_contents(store, live, {d1["id"]: cut1, va["id"]: {a: cut_a}})

    # The snapshot holds exactly the group's records 1..seq, in journal order.
    store.sync()
    entries = [e for e in read_records(store, "cut", limit=1 << 20) if e.group == gid and e.kind != "volume"]
    assert [e.seq for e in entries] == list(range(1, expected + 1))
    for snap_d, vids in ((d1, (a, b)), (va, (a,))):
        rebuilt = {a: bytearray(size), b: bytearray(size)}
        for e in entries:
            if e.seq > snap_d["seq"]:
                break
            if e.kind == "write":
                rebuilt[e.volume][e.offset : e.offset + e.length] = e.data
            else:
                rebuilt[e.volume][e.offset : e.offset + e.length] = bytes(e.length)
        for vid in vids:
            assert read_all(store, vid, size, snap_d["id"]) == rebuilt[vid]

    store = crash_reopen(store, pool)
    assert store.state.group_seq[gid] == expected
    assert [d["seq"] for d in snapshots.listing(store, "g")] == [d1["seq"]]
    random_ops(5)
    d2 = snapshots.create(store, "g", "two")
    assert d2["seq"] == expected > d1["seq"]
    check_contents(store, live, {d1["id"]: cut1, d2["id"]: {v: bytes(m) for v, m in live.items()}})
    store.close()


# -- 4. rollback and clones --------------------------------------------------------------------

def test_rollback_restores_content_and_size_after_a_safety_snapshot(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    size = 2 * MiB
    a, b = make_group(store, ["a", "b"], size)
    rng = random.Random(404)
    live = {a: bytearray(size), b: bytearray(size)}
    for vid in (a, b):
        put(store, vid, live[vid], 0, rng.randbytes(size))
    s1 = snapshots.create(store, "g", "s1")["id"]
    at_s1 = {v: bytes(m) for v, m in live.items()}
    for vid in (a, b):
        scribble(store, vid, live[vid], rng, 10)
    store.resize_volume("a", 3 * MiB)  # grow a and write past its old end
    live[a].extend(bytes(MiB))
    put(store, a, live[a], size + 11, rng.randbytes(MiB - 100))
    store.resize_volume("b", MiB, allow_shrink=True)  # shrink b: its tail is gone from the live map
    del live[b][MiB:]
    before = {v: bytes(m) for v, m in live.items()}

    res = snapshots.rollback(store, "g", "s1")
    assert res["rolled_back"] and res["name"] == "s1"
    safety = res["safety_snapshot"]
    assert safety.startswith("pre-rollback-")
    assert store.volume("a").size == size and store.volume("b").size == size
    assert read_all(store, a, size) == at_s1[a] and read_all(store, b, size) == at_s1[b]
    assert read_all(store, a, 3 * MiB) == at_s1[a]  # cut at the restored size
    sd = snapshots.get(store, "g", safety)
    assert {m.name: m.size for m in sd.members} == {"a": 3 * MiB, "b": MiB}
    assert read_all(store, a, 3 * MiB, sd.id) == before[a]
    assert read_all(store, b, MiB, sd.id) == before[b]
    assert read_all(store, a, size, s1) == at_s1[a]
    live = {v: bytearray(m) for v, m in at_s1.items()}

    # Growing again after the rollback shows zeros, not the data written past the old end.
    store.resize_volume("a", 3 * MiB)
    live[a].extend(bytes(MiB))
    assert read_all(store, a, 3 * MiB) == live[a]
    scribble(store, a, live[a], rng, 5)

    # A second rollback to the same snapshot: another, distinct safety snapshot.
    res2 = snapshots.rollback(store, "g", "s1")
    assert res2["safety_snapshot"] != safety and res2["safety_snapshot"].startswith("pre-rollback-")
    sd2 = snapshots.get(store, "g", res2["safety_snapshot"])
    assert read_all(store, a, 3 * MiB, sd2.id) == live[a]
    live = {v: bytearray(m) for v, m in at_s1.items()}
    check_contents(store, live, {s1: at_s1})

    # Rolling back to the first safety snapshot brings the pre-rollback state back.
    snapshots.rollback(store, "g", safety)
    assert store.volume("a").size == 3 * MiB and store.volume("b").size == MiB
    live = {v: bytearray(m) for v, m in before.items()}
    check_contents(store, live, {s1: at_s1, sd.id: before})
    expect = image(store)
    store = crash_reopen(store, pool)
    assert image(store) == expect
    check_contents(store, live, {s1: at_s1, sd.id: before})
    assert_refcounts(store)
    store.close()


def test_clones_are_independent_of_their_snapshot_and_source(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    size = 2 * MiB
    a, b = make_group(store, ["a", "b"], size)
    rng = random.Random(405)
    live = {a: bytearray(size), b: bytearray(size)}
    for vid in (a, b):
        scribble(store, vid, live[vid], rng, 15)
    s1 = snapshots.create(store, "g", "s1")["id"]
    at_s1 = {v: bytes(m) for v, m in live.items()}
    for vid in (a, b):
        scribble(store, vid, live[vid], rng, 5)

    assert snapshots.clone(store, "g", "s1", "k") == ["k-a", "k-b"]
    ka, kb = store.volume("k-a"), store.volume("k-b")
    assert ka.size == kb.size == size and ka.group == kb.group == 0
    assert ka.clone_of == [s1, a] and kb.clone_of == [s1, b]
    live[ka.id], live[kb.id] = bytearray(at_s1[a]), bytearray(at_s1[b])
    check_contents(store, live, {s1: at_s1})
    with pytest.raises(AlreadyExists):
        snapshots.clone(store, "g", "s1", "k")
    assert snapshots.image(store, "g", "s1", "b")[:3] == (s1, b, size)
    assert ["g", "s1", "a"] in snapshots.tree(store)

    # Writes to the clone do not reach the snapshot or the source, and the other way round.
    for _ in range(3):
        scribble(store, ka.id, live[ka.id], rng, 6)
        scribble(store, a, live[a], rng, 6)
        trim(store, kb.id, live[kb.id], 100_001, 300_000)
        check_contents(store, live, {s1: at_s1})

    # A clone of a volume snapshot takes the prefix as its name; a clone of a clone works too.
    snapshots.create(store, "k-a", "ks")
    assert snapshots.clone(store, "k-a", "ks", "kk") == ["kk"]
    kk = store.volume("kk").id
    live[kk] = bytearray(live[ka.id])
    scribble(store, kk, live[kk], rng, 5)
    scribble(store, ka.id, live[ka.id], rng, 3)

    # The snapshot and the source may go away; the clones keep their data.
    snapshots.delete(store, "g", "s1")
    with pytest.raises(NotFound):
        store.read(a, 0, 10, sid=s1)
    store.event(lambda st: st.catalog.make_group_remove(st.table, "g", "a"))
    store.delete_volume("a")
    del live[a]
    check_contents(store, live, {})
    assert_refcounts(store)
    store = crash_reopen(store, pool)
    check_contents(store, live, {})
    store.close()
    store = Store.open(pool)
    check_contents(store, live, {})
    assert_refcounts(store)
    store.close()
    assert run_check(pool).clean


# -- 5. space ----------------------------------------------------------------------------------

def test_deleting_all_snapshots_returns_their_space(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    size = 12 * MiB
    (a,) = make_group(store, ["a"], size)
    rng = random.Random(505)
    model = bytearray(size)
    put(store, a, model, 0, rng.randbytes(size))
    snaps = {}
    for i in range(5):
        sid = snapshots.create(store, "g", f"s{i}")["id"]
        snaps[sid] = {a: bytes(model)}
        put(store, a, model, rng.randrange(MiB), rng.randbytes(10 * MiB + 17))
        for _ in range(5):
            put(store, a, model, rng.randrange(size - MiB), rng.randbytes(rng.randrange(1, MiB)))
    store.sync()
    assert_refcounts(store)
    held = store.usage()["journal_bytes"]
    assert held > 5 * 10 * MiB

    # GC while the snapshots exist moves their data and frees nothing they need.
    Reclaimer(store).collect(targets=set(store.journal.segments()[:-1]))
    store.checkpoint()
    check_contents(store, {a: model}, snaps)
    assert store.usage()["journal_bytes"] > 5 * 10 * MiB

    for i in range(5):
        snapshots.delete(store, "g", f"s{i}")
    assert not store.state.snap_maps
    mapped = store.state.mapped_bytes()
    assert mapped == store.volume_usage(a) == size
    assert sum(store.state.live.values()) == mapped, "references leaked by deleted snapshots"
    assert_refcounts(store)

    Reclaimer(store).collect(targets=set(store.journal.segments()[:-1]))
    store.checkpoint()
    used = store.usage()["journal_bytes"]
    assert used <= mapped + 2 * SEG, (used, mapped)
    assert sum(store.state.live.values()) == mapped
    assert read_all(store, a, size) == model
    store = reopen(store, pool)
    assert read_all(store, a, size) == model
    assert store.usage()["journal_bytes"] <= mapped + 2 * SEG
    store.close()


@pytest.mark.parametrize("how", ["crash", "checkpoint"])
def test_deleting_one_snapshot_keeps_what_another_needs(tmp_path, how):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    size = 8 * MiB
    (a,) = make_group(store, ["a"], size)
    rng = random.Random(506)
    model = bytearray(size)
    put(store, a, model, 0, rng.randbytes(size))
    s1 = snapshots.create(store, "g", "s1")["id"]
    put(store, a, model, 3, rng.randbytes(size // 2))
    s2 = snapshots.create(store, "g", "s2")["id"]
    at_s2 = bytes(model)
    s3 = snapshots.create(store, "g", "s3")["id"]  # no write in between: shares everything with s2
    put(store, a, model, 0, rng.randbytes(size))  # s1's data now lives only in snapshots
    trim(store, a, model, MiB, MiB)
    store.sync()
    assert store.journal.current_segno >= 2

    snapshots.delete(store, "g", "s1")
    assert (s1, a) not in store.state.snap_maps
    assert_refcounts(store)
    Reclaimer(store).collect(targets=set(store.journal.segments()[:-1]))
    store.checkpoint()
    check_contents(store, {a: model}, {s2: {a: at_s2}, s3: {a: at_s2}})
    snapshots.delete(store, "g", "s2")  # s3 still holds the same data
    Reclaimer(store).collect(targets=set(store.journal.segments()[:-1]))
    store.checkpoint()
    check_contents(store, {a: model}, {s3: {a: at_s2}})
    assert_refcounts(store)
    store = crash_reopen(store, pool) if how == "crash" else reopen(store, pool)
    check_contents(store, {a: model}, {s3: {a: at_s2}})
    assert_refcounts(store)
    store.close()
    assert run_check(pool).clean


# -- 6. GC with snapshots ----------------------------------------------------------------------

@pytest.mark.parametrize("ckpt", ["none", "before_gc", "after_gc"])
def test_gc_moves_snapshot_only_data_using_the_exact_count(tmp_path, ckpt):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    size = 6 * MiB
    (a,) = make_group(store, ["a"], size)
    b = store.create_volume("b", 9 * MiB).id
    rng = random.Random(606)
    live = {a: bytearray(size)}
    put(store, a, live[a], 0, rng.randbytes(size))  # segment 1: a's original data...
    store.write(b, 0, rng.randbytes(9 * MiB))  # ...and 9 MiB that die below
    s1 = snapshots.create(store, "g", "s1")["id"]
    at_s1 = {a: bytes(live[a])}
    assert snapshots.clone(store, "g", "s1", "k") == ["k-a"]
    k = store.volume("k-a").id
    live[k] = bytearray(at_s1[a])
    put(store, k, live[k], 5 * MiB + 7, rng.randbytes(8 * KiB))
    put(store, a, live[a], MiB + 3, rng.randbytes(4 * KiB))
    s2 = snapshots.create(store, "g", "s2")["id"]
    at_s2 = {a: bytes(live[a])}
    put(store, a, live[a], 3 * MiB + 5, rng.randbytes(4 * KiB))
    store.trim(b, 0, 9 * MiB)
    assert store.journal.current_segno == 1
    put(store, a, live[a], 0, rng.randbytes(size))  # a overwritten completely, in segment 2
    assert store.journal.current_segno == 2
    store.sync()
    snaps = {s1: at_s1, s2: at_s2}

    gc = Reclaimer(store, min_dead=0.5)
    gc.exact_interval = 0
    # Segment 1 holds a's old data only for s1, s2 and the clone: each leaf version counts it again,
    # so the per-leaf count alone makes the segment look fuller than it is.
    snap_only = size + 4 * KiB + 8 * KiB  # the original data, s2's 4 KiB and the clone's 8 KiB
    assert store.state.live[1] > (1 - gc.min_dead) * store.state.seg_logical[1]
    assert snap_only <= (1 - gc.min_dead) * store.state.seg_logical[1]
    assert gc.candidates() == {1}
    if ckpt == "before_gc":
        store.checkpoint()
    relocated = store.stats.relocated_bytes
    moved = gc.collect()
    assert snap_only <= moved == store.stats.relocated_bytes - relocated  # == : see the test below
    assert 1 not in store.state.live
    assert gc.candidates() == set()
    check_contents(store, live, snaps)
    assert_refcounts(store)
    assert seg_exists(pool, 1)
    if ckpt == "after_gc":
        store.checkpoint()
        store.checkpoint()  # segment 1 goes once both checkpoint copies lie past it
        assert not seg_exists(pool, 1)
        check_contents(store, live, snaps)

    store = crash_reopen(store, pool)  # replays the REC_RELOCATE records unless checkpointed after
    if ckpt != "after_gc":
        assert store.recovery["records"] > 0
    assert not seg_exists(pool, 1)
    assert 1 not in store.state.live
    check_contents(store, live, snaps)
    assert_refcounts(store)
    store.close()
    rep = run_check(pool)
    assert rep.clean, rep.problems
    store = Store.open(pool)
    check_contents(store, live, snaps)
    store.close()


def test_gc_copies_shared_snapshot_data_once(tmp_path):
    """A snapshot and a clone made from it hold one record; the clone's chunk is fragmented by a
    write, the snapshot's is whole. GC must copy each referenced byte once: the clone's pieces
    are moved (and repointed in the snapshot too), so the snapshot's whole-chunk extent has only
    the 4 KiB under the clone's write left to move, not all 512 KiB again."""
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    a = store.create_volume("a", MiB).id
    data = random.Random(1).randbytes(MiB)
    store.write(a, 0, data)  # one record, chunks 0 and 1
    sid = snapshots.create(store, "a", "s1")["id"]
    assert snapshots.clone(store, "a", "s1", "k") == ["k"]
    k = store.volume("k").id
    store.write(k, 100_000, b"x" * 4096)  # the clone's chunk 0 is now fragmented
    store.trim(a, 0, MiB)  # only s1 and the clone hold the record now
    f = store.create_volume("f", 16 * MiB).id
    store.write(f, 0, os.urandom(16 * MiB))  # fill segment 1 and roll over
    store.trim(f, 0, 16 * MiB)
    assert store.journal.current_segno == 2
    referenced_before = MiB + 4096  # the record once, and the clone's write
    moved = Reclaimer(store).collect(targets={1})
    assert store.read(a, 0, MiB, sid=sid) == data
    assert store.read(k, 0, MiB) == data[:100_000] + b"x" * 4096 + data[104_096:]
    assert 1 not in store.state.live
    assert moved == referenced_before, f"GC copied {moved} bytes to move {referenced_before} referenced bytes"
    store.close()


# -- 7. accounting -----------------------------------------------------------------------------

def test_exclusive_and_shared_bytes(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    a, b = make_group(store, ["a", "b"], 2 * MiB)
    rng = random.Random(707)
    store.write(a, 0, rng.randbytes(MiB))
    store.write(b, 0, rng.randbytes(256 * KiB))

    def excl_shared() -> dict[str, tuple[int, int]]:
        return {d["name"]: (d["exclusive"], d["shared"]) for d in snapshots.listing(store, "g")}

    def vol_sizes(vid: int) -> tuple[int, int, int]:
        d = snapshots.sizes(store)[1][vid]
        return d["allocated"], d["snapshots"], d["total"]

    snapshots.create(store, "g", "s1")
    assert excl_shared() == {"s1": (0, MiB + 256 * KiB)}
    store.write(a, 64 * KiB, rng.randbytes(64 * KiB))
    snapshots.create(store, "g", "s2")
    store.write(a, 64 * KiB, rng.randbytes(64 * KiB))
    rest = MiB - 64 * KiB + 256 * KiB
    assert excl_shared() == {"s1": (64 * KiB, rest), "s2": (64 * KiB, rest)}
    sizes = snapshots.sizes(store)[0]
    s1, s2 = (snapshots.get(store, "g", n).id for n in ("s1", "s2"))
    assert sizes[(s1, a)] == (64 * KiB, MiB - 64 * KiB) and sizes[(s1, b)] == (0, 256 * KiB)
    assert vol_sizes(a) == (MiB, 128 * KiB, MiB + 128 * KiB)
    assert vol_sizes(b) == (256 * KiB, 0, 256 * KiB)

    store.trim(a, 512 * KiB, 512 * KiB)  # now held by s1 and s2 only: shared, not exclusive
    assert excl_shared() == {"s1": (64 * KiB, rest), "s2": (64 * KiB, rest)}
    assert vol_sizes(a) == (512 * KiB, 640 * KiB, MiB + 128 * KiB)

    snapshots.delete(store, "g", "s2")  # s1 alone holds what it shared with s2
    assert excl_shared() == {"s1": (576 * KiB, MiB - 576 * KiB + 256 * KiB)}
    assert vol_sizes(a) == (512 * KiB, 576 * KiB, MiB + 64 * KiB)

    assert snapshots.clone(store, "g", "s1", "k") == ["k-a", "k-b"]
    ka = store.volume("k-a").id
    assert excl_shared() == {"s1": (0, MiB + 256 * KiB)}  # the clone shares all of it
    assert vol_sizes(a) == (512 * KiB, 576 * KiB, MiB + 64 * KiB)
    assert vol_sizes(ka) == (MiB, 0, MiB)
    store.write(ka, 600 * KiB, rng.randbytes(100 * KiB))
    assert excl_shared() == {"s1": (100 * KiB, MiB - 100 * KiB + 256 * KiB)}

    snapshots.create(store, "g", "s3")  # identical to the live volumes: nothing exclusive
    assert excl_shared() == {"s1": (100 * KiB, MiB - 100 * KiB + 256 * KiB),
                             "s3": (0, 512 * KiB + 256 * KiB)}
    store.trim(a, 0, 2 * MiB)
    assert excl_shared() == {"s1": (100 * KiB, MiB - 100 * KiB + 256 * KiB),
                             "s3": (64 * KiB, 448 * KiB + 256 * KiB)}
    assert vol_sizes(a) == (0, MiB + 64 * KiB, MiB + 64 * KiB)

    # A fragmented piece shared at odd boundaries.
    store.write(b, 1000, rng.randbytes(3001))
    assert excl_shared()["s3"] == (64 * KiB, 448 * KiB + 256 * KiB)
    snapshots.create(store, "g", "s4")
    store.write(b, 2000, rng.randbytes(10))
    assert excl_shared()["s4"] == (10, 256 * KiB - 10)
    assert vol_sizes(b) == (256 * KiB, 3001 + 10, 256 * KiB + 3001 + 10)
    listing = excl_shared()
    store = crash_reopen(store, pool)
    assert excl_shared() == listing
    store = reopen(store, pool)
    assert excl_shared() == listing
    store.close()


# -- 8. diff -----------------------------------------------------------------------------------

class Versions:
    """Which write last set each byte (0: unmapped): the mapping changes exactly where this does."""

    def __init__(self, size: int) -> None:
        self.ver = array("I", bytes(4 * size))
        self.n = 0
        self.marks = {0, size}

    def write(self, off: int, n: int) -> None:
        self.n += 1
        self.ver[off : off + n] = array("I", [self.n]) * n
        self.marks.update((off, off + n))

    def trim(self, off: int, n: int) -> None:
        self.ver[off : off + n] = array("I", bytes(4 * n))
        self.marks.update((off, off + n))

    def diff(self, old: array, new: array) -> list[list[int]]:
        out: list[list[int]] = []
        points = sorted(self.marks)
        for x, y in zip(points, points[1:], strict=False):
            if old[x] != new[x]:
                if out and out[-1][1] == x:
                    out[-1][1] = y
                else:
                    out.append([x, y])
        return out


def test_diff_lists_exactly_the_changed_ranges(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    size = 3 * MiB
    a, b = make_group(store, ["a", "b"], size)
    rng = random.Random(808)
    vers = {a: Versions(size), b: Versions(size)}

    def write(vid: int, off: int, n: int) -> None:
        store.write(vid, off, rng.randbytes(n))
        vers[vid].write(off, n)

    def zero(vid: int, off: int, n: int) -> None:  # a zero write is a trim
        store.write(vid, off, bytes(n))
        vers[vid].trim(off, n)

    def trim_(vid: int, off: int, n: int) -> None:
        store.trim(vid, off, n)
        vers[vid].trim(off, n)

    def random_ops(count: int, vids: tuple[int, ...]) -> None:
        for _ in range(count):
            vid = rng.choice(vids)
            off = rng.randrange(size - 1)
            n = min(rng.randrange(1, 200 * KiB), size - off)
            rng.choice((write, write, write, trim_, zero))(vid, off, n)

    write(a, 0, MiB)
    write(a, 2 * MiB + 1, 333)
    write(b, 77, 512 * KiB)
    snapshots.create(store, "g", "A")
    at = {"A": {v: array("I", x.ver) for v, x in vers.items()}}
    write(a, 100_001, 5000)
    write(a, 105_001, 7)  # touches the previous write: one range
    trim_(a, 600_000, 50_000)
    zero(a, 1_500_000, 80_000)  # zeros over unmapped space: nothing changes
    trim_(a, 2_500_000, 10_000)  # unmapped too
    write(a, 2 * MiB - 5, 10)  # across a chunk boundary (512 KiB chunks), merged over it
    zero(b, 100, 1000)  # zeros over mapped data: a change
    write(a, 2_800_001, 4096)
    trim_(a, 2_800_001, 4096)  # written and trimmed again: unmapped before and after
    snapshots.create(store, "g", "A2")
    assert [(d["volume"], d["ranges"]) for d in snapshots.diff(store, "g", "A", "A2")] == [
        ("a", [[100_001, 105_008], [600_000, 650_000], [2 * MiB - 5, 2 * MiB + 5]]), ("b", [[100, 1100]])]
    random_ops(15, (a,))
    snapshots.create(store, "g", "B")
    at["B"] = {v: array("I", x.ver) for v, x in vers.items()}
    random_ops(20, (a, b))
    snapshots.create(store, "g", "C")
    at["C"] = {v: array("I", x.ver) for v, x in vers.items()}
    random_ops(5, (a, b))  # live changes do not show in diffs between snapshots

    def check() -> None:
        for frm, to in (("A", "B"), ("B", "C"), ("A", "C"), ("C", "A"), ("B", "B")):
            got = {d["volume"]: d for d in snapshots.diff(store, "g", frm, to)}
            assert set(got) == {"a", "b"}
            for name, vid in (("a", a), ("b", b)):
                want = vers[vid].diff(at[frm][vid], at[to][vid])
                assert got[name]["ranges"] == want, (frm, to, name)
                assert got[name]["changed_bytes"] == sum(y - x for x, y in want)
                assert got[name]["id"] == vid

    check()
    assert snapshots.diff(store, "g", "A", "B")[1]["ranges"] == [[100, 1100]]
    store = crash_reopen(store, pool)
    check()
    store = reopen(store, pool)
    check()
    store.close()


# -- 9. policies -------------------------------------------------------------------------------

def policy_keep(autos: list[tuple[float, int]], keep_last: int, keep_daily: int) -> set[int]:
    newest_first = sorted(autos, reverse=True)
    keep = {sid for _t, sid in newest_first[:keep_last]}
    days: list[object] = []
    for t, sid in newest_first:
        day = datetime.fromtimestamp(t, UTC).date()
        if day in days:
            continue
        if len(days) == keep_daily:
            break
        days.append(day)
        keep.add(sid)
    return keep


def test_policy_takes_due_snapshots_and_prunes_by_retention(tmp_path):
    clock = ManualClock()
    pool = make_pool(tmp_path)
    store = Store.open(pool, clock=clock)
    (a,) = make_group(store, ["a"], MiB)
    snapshots.set_policy(store, "g", every=900, keep_last=3, keep_daily=2)
    gc = Reclaimer(store, clock=clock)
    sim: list[tuple[float, int]] = []  # (created, sid) of the autos that should exist
    manual: list[int] = []
    pinned: int | None = None
    pinned_would_go = False
    taken = 0
    step_s = 300  # lands exactly on every=900: due at >= every, not only past it
    for step in range(400):
        now = clock.time()
        newest = max((t for t, _ in sim), default=None)
        due = newest is None or now - newest >= 900
        next_sid = store.state.catalog.next_sid
        if step == 99:
            pinned = max(sim)[1]
        in_use = {pinned} if pinned is not None and 100 <= step < 124 else set()
        if step % 3 == 0:
            gc.snapshots_in_use = lambda pins=in_use: dict.fromkeys(pins, 1)
            gc.tick()
        else:
            snapshots.run_policies(store, in_use=in_use)
        assert store.state.catalog.next_sid - next_sid == int(due), step  # taken exactly when due
        if due:
            sim.append((now, next_sid))
            taken += 1
        keep = policy_keep(sim, 3, 2)
        if pinned in in_use and pinned not in keep:
            pinned_would_go = True
        sim = [x for x in sim if x[1] in keep or x[1] in in_use]
        autos = [s for s in store.state.catalog.snapshots_of("group", 1) if s.auto]
        assert sorted((s.created, s.id) for s in autos) == sorted(sim), step
        assert all(s.name.startswith("auto-") for s in autos)
        if step in (30, 150):
            manual.append(snapshots.create(store, "g", f"auto-but-manual-{step}")["id"])
            store.write(a, step * 1000, os.urandom(5000))
        if step == 200:  # the policy is journaled: it survives a reopen
            store = crash_reopen(store, pool, clock=clock)
            gc = Reclaimer(store, clock=clock)
        clock.advance(step_s)
    assert pinned_would_go and pinned not in {sid for _t, sid in sim}
    assert taken == 134  # every third step of 300 s: every 900 s
    assert set(manual) <= set(store.state.catalog.snaps)  # manual snapshots are never pruned
    # keep_last 3 (all of the last day) plus the newest of the day before
    days = {datetime.fromtimestamp(t, UTC).date() for t, _sid in sim}
    assert len(days) == 2 and len(sim) == 4
    # Without a policy nothing more happens.
    snapshots.set_policy(store, "g", None, 0, 0)
    clock.advance(10_000)
    assert snapshots.run_policies(store) == []
    store.close()


# -- 10. crash safety of catalog events --------------------------------------------------------

@pytest.mark.parametrize("op", ["snapshot", "delete", "rollback", "clone"])
def test_torn_catalog_event_is_absent_after_reopen(tmp_path, op):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    size = MiB
    a, b = make_group(store, ["a", "b"], size)
    rng = random.Random(1010)
    live = {a: bytearray(size), b: bytearray(size)}
    for vid in (a, b):
        scribble(store, vid, live[vid], rng, 8)
    snapshots.create(store, "g", "s1")
    for vid in (a, b):
        scribble(store, vid, live[vid], rng, 4)
    store.sync()
    before = image(store)
    segno = store.journal.current_segno
    start = store.journal.segment_bytes(segno)

    if op == "snapshot":
        snapshots.create(store, "g", "s2")
        assert len(snapshots.listing(store)) == 2
    elif op == "delete":
        snapshots.delete(store, "g", "s1")
        assert not snapshots.listing(store)
    elif op == "rollback":
        snapshots.rollback(store, "g", "s1")
        assert len(snapshots.listing(store)) == 2
    else:
        snapshots.clone(store, "g", "s1", "k")
        assert store.volume("k-a")
    assert image(store) != before
    store.close(checkpoint=False)
    end = seg_size(pool, segno)
    assert end > start and seg_list(pool)[-1] == segno  # the event is the last record
    seg_cut(pool, segno, end - 3)

    rep = run_check(pool)
    assert rep.clean, rep.problems
    assert any("torn tail" in n for n in rep.notes)
    store = Store.open(pool)
    assert store.recovery["torn_tail"] is not None
    assert image(store) == before
    check_contents(store, live, {})
    assert_refcounts(store)
    # and the operation can simply be done again
    if op == "snapshot":
        assert snapshots.create(store, "g", "s2")["seq"] == before["group_seq"][1]
    elif op == "delete":
        snapshots.delete(store, "g", "s1")
    elif op == "rollback":
        snapshots.rollback(store, "g", "s1")
    else:
        assert snapshots.clone(store, "g", "s1", "k") == ["k-a", "k-b"]
    after = image(store)
    store = crash_reopen(store, pool)
    assert image(store) == after
    store.close()


# -- 11. pool check ----------------------------------------------------------------------------

def test_pool_check_with_snapshots_and_corruption_in_snapshot_only_data(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    size = 2 * MiB
    a, b = make_group(store, ["a", "b"], size)
    rng = random.Random(1111)
    live = {a: bytearray(size), b: bytearray(size)}
    for vid in (a, b):
        put(store, vid, live[vid], 0, rng.randbytes(size))
    s1 = snapshots.create(store, "g", "s1")["id"]
    at_s1 = {v: bytes(m) for v, m in live.items()}
    snapshots.clone(store, "g", "s1", "k")
    ka, kb = store.volume("k-a").id, store.volume("k-b").id
    live[ka], live[kb] = bytearray(at_s1[a]), bytearray(at_s1[b])
    # a's [300K, 400K) is now held only by s1 (not the live volume, not the clone of a)
    put(store, a, live[a], 300 * KiB, rng.randbytes(100 * KiB))
    put(store, ka, live[ka], 300 * KiB, rng.randbytes(100 * KiB))
    put(store, kb, live[kb], 5, rng.randbytes(1000))
    s2 = snapshots.create(store, "g", "s2")["id"]
    at_s2 = {v: bytes(live[v]) for v in (a, b)}
    for vid in (a, b):
        scribble(store, vid, live[vid], rng, 5)
    store.sync()
    store.write(b, 0, b"later")  # a commit marker now covers everything before
    live[b][:5] = b"later"
    snaps = {s1: at_s1, s2: at_s2}
    check_contents(store, live, snaps)
    store.close()
    rep = run_check(pool)
    assert rep.clean, rep.problems
    assert rep.extents > 0 and rep.bytes_verified > 0

    store = Store.open(pool)
    (s, e, loc), *_ = store.state.snap_maps[(s1, a)].lookup(350 * KiB, 351 * KiB)
    assert s <= 350 * KiB < e
    for vm in store.state.all_maps():
        if vm is not store.state.snap_maps[(s1, a)]:
            assert all(x[2] != loc for x in vm.lookup(300 * KiB, 400 * KiB))
    header, frames = store.journal.read_header(loc_segno(loc), loc_pos(loc))
    assert not any(f.flags for f in frames)  # raw frames: volume byte X is at payload offset X - header.offset
    store.close()
    seg_flip(pool, loc_segno(loc), loc_pos(loc) + RECORD_HEADER_SIZE + header.table_size
              + 350 * KiB + 17 - header.offset)

    rep = run_check(pool)
    assert not rep.clean
    assert any(f"snapshot {s1} volume {a}" in p for p in rep.problems), rep.problems
    store = Store.open(pool)
    with pytest.raises(CorruptData):
        store.read(a, 340 * KiB, 20 * KiB, sid=s1)
    assert store.read(a, 0, 300 * KiB, sid=s1) == at_s1[a][: 300 * KiB]
    check_contents(store, live, {s2: at_s2})
    store.close()


def test_a_version_3_checkpoint_opens_and_gives_the_same_sizes(tmp_path, monkeypatch):
    """Checkpoint version 4 added leaf origins (lineage.py) after the maps. A pool whose
    checkpoint is version 3 opens, accounts its snapshots the same, and is rewritten as 4."""
    from poolkit import origins_offset

    from vstor.store.maintenance import checkpoint

    pool = make_pool(tmp_path)
    store = Store.open(pool)
    (a,) = make_group(store, ["a"], 3 * MiB)
    rng = random.Random(5)
    store.write(a, 0, rng.randbytes(3 * MiB))
    for i in range(6):
        for _ in range(5):
            store.write(a, rng.randrange(3 * MiB - 4096), rng.randbytes(4096))
        snapshots.create(store, "g", f"s{i}")
    want = snapshots.listing(store, "g")
    assert any(s["exclusive"] for s in want) and all(s["shared"] for s in want)
    store.close()
    meta_dir = backend_for(pool)
    ck = checkpoint.read_checkpoint(meta_dir, load_superblock(pool).uuid_bytes)
    assert ck.version == 4
    ck.maps = ck.maps[: origins_offset(ck.maps)]
    monkeypatch.setattr(checkpoint, "VERSION", 3)
    checkpoint.write_checkpoint(meta_dir, load_superblock(pool).uuid_bytes, ck)
    monkeypatch.undo()
    store = Store.open(pool)
    assert snapshots.listing(store, "g") == want
    store.close()
    assert checkpoint.read_checkpoint(meta_dir, load_superblock(pool).uuid_bytes).version == 4
    meta_dir.close()
