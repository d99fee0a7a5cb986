"""Resolved blocks (vstor/store/reads/resolved.py): a 4 KiB block the fast path served is read
next time from where it was found, and never when the volume holds other bytes there: after a
write, a trim, a shrink, a rollback, a read that raced a write, an entry whose segment is gone
or whose bytes changed. Damage under an entry is reported, not returned."""

from __future__ import annotations

import os
import random
import time

import pytest
from poolkit import MiB, evict_segments, make_pool, resident, seg_flip, seg_path

from vstor.errors import CorruptData, WouldBlock
from vstor.store.catalog import snapshots
from vstor.store.journal.format import RECORD_HEADER_SIZE, loc_pos, loc_segno
from vstor.store.reads.resolved import ENTRY_COST, ResolvedBudget, place, unplace
from vstor.store.store import Store

pytestmark = pytest.mark.usefixtures("pool_backend")  # each test on a local and a RADOS pool (tests/poolsite.py)

SIZE = 4 * MiB
BLOCK = 4096


def _pool(tmp_path, **opts) -> tuple[str, Store, int, bytearray]:
    """A 4 MiB volume: a 1 MiB record at 0 (block sums), 4 KiB records at 1 MiB + k * 8 KiB."""
    pool = make_pool(tmp_path, **opts)
    st = Store.open(pool, key_file=str(tmp_path / "key") if opts.get("encrypt") else None)
    vid = st.create_volume("v", SIZE).id
    model = bytearray(SIZE)
    for off, n in [(0, MiB)] + [(MiB + k * 8192, BLOCK) for k in range(16)]:
        data = os.urandom(n)
        st.write(vid, off, data)
        model[off : off + n] = data
    st.sync()
    return pool, st, vid, model


def _read(st: Store, vid: int, off: int, n: int = BLOCK) -> bytes:
    buf = bytearray(n)
    assert st.read_into(vid, off, memoryview(buf)) == n
    return bytes(buf)


@pytest.fixture
def written(tmp_path):
    """_pool's pool, store, volume and model; the store closed after the test."""
    pool, st, vid, model = _pool(tmp_path)
    yield pool, st, vid, model
    st.close()


def _fast(st: Store, vid: int, off: int) -> bytes | None:
    """What the fast path alone returns for the block at ``off`` (a read that may wait)."""
    buf = bytearray(BLOCK)
    return bytes(buf) if st._read_small(vid, off, memoryview(buf), False) else None


def _evict_block(pool: str, found: int) -> None:
    """evict_segments until the resolved block ``found`` is out of the page cache: a read the
    test made just before may have started read-ahead that lands after a drop."""
    segno, pos, _csum = unplace(found)
    path = seg_path(pool, segno)
    deadline = time.monotonic() + 5.0
    while True:
        evict_segments(pool)
        if not resident(path, pos, BLOCK):
            return
        assert time.monotonic() < deadline, "the block stays in the page cache"


def _resolved(st: Store, vid: int) -> dict[int, int]:
    return st.state.maps[vid].resolved


def _write(st: Store, vid: int, model: bytearray, off: int, data: bytes) -> None:
    st.write(vid, off, data)
    model[off : off + len(data)] = data


@pytest.mark.local_only("blocks are resolved on local pools only; the [rados] variant is the next test")
def test_served_blocks_are_resolved_and_read_from_there(written):
    _pool_, st, vid, model = written
    offs = [4096, 64 << 10, MiB, MiB + 8192]  # blocks of the big record, two 4 KiB records
    for off in offs:
        assert _read(st, vid, off) == model[off : off + BLOCK]
    assert sorted(_resolved(st, vid)) == [o // BLOCK for o in offs]
    reads = st.stats.reads
    for off in offs:  # again: from the entries, the same bytes, counted as reads
        assert _read(st, vid, off) == model[off : off + BLOCK]
        assert bytes(st.read(vid, off, BLOCK)) == model[off : off + BLOCK]
        assert bytes(st.read(vid, off, BLOCK, nowait=True)) == model[off : off + BLOCK]
    assert st.stats.reads == reads + 3 * len(offs)
    # Unaligned, partial and larger reads are not resolved.
    for off, n in ((4096 + 512, BLOCK), (MiB, 1024), (8192, 8192), (0, MiB)):
        assert _read(st, vid, off, n) == model[off : off + n]
    assert sorted(_resolved(st, vid)) == [o // BLOCK for o in offs]


def test_nothing_is_resolved_on_a_remote_pool_or_from_transformed_frames(tmp_path, request):
    """Blocks of lz4 frames that gained and of encrypted frames are never resolved (an lz4
    pool stores incompressible data as is, and resolves that); a remote pool resolves nothing."""
    remote = "rados" in request.node.name
    for opts in ({}, {"compress": "lz4"}, {"encrypt": True}):
        if remote and opts:
            continue
        sub = tmp_path / (next(iter(opts), "plain"))
        sub.mkdir()
        pool = make_pool(sub, **opts)
        st = Store.open(pool, key_file=str(sub / "key") if opts.get("encrypt") else None)
        try:
            vid = st.create_volume("v", SIZE).id
            model = bytearray(SIZE)
            _write(st, vid, model, 0, b"compressible" * (MiB // 12) + bytes(MiB % 12))  # lz4 gains here
            _write(st, vid, model, MiB, b"a" * BLOCK)
            _write(st, vid, model, 2 * MiB, os.urandom(MiB))
            _write(st, vid, model, 3 * MiB, os.urandom(BLOCK))
            offs = (8192, MiB, 2 * MiB + 8192, 3 * MiB)
            for _ in range(2):
                for off in offs:
                    assert _read(st, vid, off) == model[off : off + BLOCK]
            vm = st.state.maps[vid]
            as_is = {off // BLOCK for off in offs if st._header(vm.covering(off, off + BLOCK)).raw_csums is not None}
            if opts.get("compress"):
                assert as_is == {(2 * MiB + 8192) // BLOCK, 3 * MiB // BLOCK}  # the random data only
            assert set(vm.resolved) == (set() if remote or opts.get("encrypt") else as_is)
        finally:
            st.close()


@pytest.mark.local_only("the page cache of a local segment file")
def test_a_cold_read_that_may_wait_is_served_by_the_fast_path_and_resolved(written):
    pool, st, vid, model = written
    other = st.create_volume("w", 8 * MiB).id
    st.write(other, 0, os.urandom(6 * MiB))  # the live segment's mapped tail lies past the records
    st.sync()
    offs = [4096, MiB + 8192]  # a block of the big record (block sums), a 4 KiB record
    evict_segments(pool)
    reads = st.stats.reads
    for off in offs:
        assert _fast(st, vid, off) == model[off : off + BLOCK]  # the header is cached since the write
    assert sorted(_resolved(st, vid)) == [o // BLOCK for o in offs]
    assert st.stats.reads == reads + len(offs)
    block, view = offs[0] // BLOCK, memoryview(bytearray(BLOCK))
    found = _resolved(st, vid)[block]
    deadline = time.monotonic() + 5.0
    while True:  # resolved but not cached: a miss, which keeps the entry
        _evict_block(pool, found)
        if not st._read_resolved(vid, block, view):
            break
        assert time.monotonic() < deadline, "the block stays in the page cache"
    assert _resolved(st, vid)[block] == found
    try:  # and a read that may not wait asks for it (or finds it, if the kernel was that quick)
        assert st._read_small(vid, offs[0], view, True) and view == model[offs[0] : offs[0] + BLOCK]
    except WouldBlock:
        pass
    big = memoryview(bytearray(8 * BLOCK))  # a larger cold read is left to the general path
    while True:  # (served only if the kernel had brought its pages back meanwhile)
        evict_segments(pool)
        if not st._read_small(vid, 16 * BLOCK, big, False):
            break
        assert time.monotonic() < deadline + 5.0, "a cold 32 KiB read was served by the fast path"
    assert _read(st, vid, 16 * BLOCK, 8 * BLOCK) == model[16 * BLOCK : 24 * BLOCK]


@pytest.mark.local_only("blocks are resolved on local pools only")
def test_every_change_of_a_block_drops_its_entry(written):
    _pool_, st, vid, model = written
    offs = [0, 4096, 8192, 512 << 10, MiB, MiB + 8192, 3 * MiB - BLOCK]
    _write(st, vid, model, 3 * MiB - BLOCK, os.urandom(BLOCK))

    def resolve_all() -> None:
        for off in offs:
            assert _read(st, vid, off) == model[off : off + BLOCK]
        assert set(_resolved(st, vid)) == {o // BLOCK for o in offs}

    resolve_all()
    _write(st, vid, model, 4096, os.urandom(BLOCK))  # an overwrite of one block
    _write(st, vid, model, MiB + 8192 + 100, b"x" * 10)  # a few bytes inside another
    assert set(_resolved(st, vid)) == {o // BLOCK for o in offs} - {1, (MiB + 8192) // BLOCK}
    for off in offs:
        assert _read(st, vid, off) == model[off : off + BLOCK]
    st.trim(vid, 0, 8192)  # a trim: zeros
    model[0:8192] = bytes(8192)
    assert 0 not in _resolved(st, vid) and 1 not in _resolved(st, vid)
    for off in offs:  # holes and a block of two records now: not resolved; the others again
        assert _read(st, vid, off) == model[off : off + BLOCK]
    assert set(_resolved(st, vid)) == {o // BLOCK for o in offs} - {0, 1, (MiB + 8192) // BLOCK}
    st.resize_volume("v", 2 * MiB, allow_shrink=True)  # a shrink, then a grow: zeros past 2 MiB
    st.resize_volume("v", SIZE)
    model[2 * MiB :] = bytes(SIZE - 2 * MiB)
    assert (3 * MiB - BLOCK) // BLOCK not in _resolved(st, vid)
    for off in offs:
        assert _read(st, vid, off) == model[off : off + BLOCK]
    assert st.volume_usage(vid) <= 2 * MiB


@pytest.mark.local_only("blocks are resolved on local pools only")
def test_a_rollback_and_a_snapshot_read_the_snapshots_bytes(written):
    _pool_, st, vid, model = written
    snapshots.create(st, "v", "s1")
    before = bytes(model)
    for off in (4096, MiB):
        _write(st, vid, model, off, os.urandom(BLOCK))
        assert _read(st, vid, off) == model[off : off + BLOCK]  # resolved: the new bytes
    sid = snapshots.get(st, "v", "s1").id
    for off in (4096, MiB):
        assert bytes(st.read(vid, off, BLOCK, sid=sid)) == before[off : off + BLOCK]
    snapshots.rollback(st, "v", "s1")
    assert _resolved(st, vid) == {}  # a new map
    for off in (4096, MiB):
        assert _read(st, vid, off) == before[off : off + BLOCK]


@pytest.mark.local_only("blocks are resolved on local pools only")
def test_a_read_that_raced_a_write_records_nothing(written):
    _pool_, st, vid, model = written
    vm = st.state.maps[vid]
    changes = vm.changes  # a reader looked block 1 up here, and found it at:
    loc = vm.covering(4096, 8192)
    old = place(loc_segno(loc), loc_pos(loc), 0)
    _write(st, vid, model, 4096, os.urandom(BLOCK))  # then a write, before the reader records
    st._record_resolved(vm, 1, old, changes)
    assert 1 not in vm.resolved
    st._record_resolved(vm, 1, old, vm.changes)  # (no change between: recorded)
    assert vm.resolved[1] == old


@pytest.mark.local_only("blocks are resolved on local pools only")
def test_an_entry_that_no_longer_holds_the_block_is_dropped_and_the_block_read_anew(written):
    _pool_, st, vid, model = written
    off = MiB + 8192
    assert _read(st, vid, off) == model[off : off + BLOCK]
    good = _resolved(st, vid)[off // BLOCK]
    vm = st.state.maps[vid]
    gone = place(10**6, RECORD_HEADER_SIZE + 64, good >> 64)  # a segment deleted since (GC)
    elsewhere = place(unplace(good)[0], RECORD_HEADER_SIZE + 64, good >> 64)  # other bytes
    for stale in (gone, elsewhere):
        vm.resolved[off // BLOCK] = stale
        errors = st.stats.read_errors
        assert _read(st, vid, off) == model[off : off + BLOCK]
        assert vm.resolved[off // BLOCK] == good  # dropped, then resolved again by the fast path
        assert st.stats.read_errors == errors


@pytest.mark.local_only("the damaged bytes are then in the page cache, where a resolved read finds them")
@pytest.mark.parametrize("off, match", [(MiB + 8192, "frame 0"), (5 * BLOCK, "block 5")])
def test_damage_under_a_resolved_block_is_reported_not_returned(written, off, match):
    pool, st, vid, model = written
    assert _read(st, vid, off) == model[off : off + BLOCK]
    found = _resolved(st, vid)[off // BLOCK]
    segno, pos, _csum = unplace(found)
    seg_flip(pool, segno, pos + 100)
    errors = st.stats.read_errors
    with pytest.raises(CorruptData, match=match):
        _read(st, vid, off)
    with pytest.raises(CorruptData, match=match):
        st.read(vid, off, BLOCK, nowait=True)
    assert st.stats.read_errors == errors + 2
    assert off // BLOCK not in _resolved(st, vid)


@pytest.mark.local_only("blocks are resolved on local pools only")
def test_the_budget_bounds_the_entries_of_all_maps(written):
    _pool_, st, vid, model = written
    other = st.create_volume("w", SIZE).id
    st.write(other, 0, os.urandom(MiB))
    st._resolved = budget = ResolvedBudget(budget=100 * ENTRY_COST, rng=random.Random(1), check_every=16)
    for off in range(0, MiB, BLOCK):
        assert _read(st, vid, off) == model[off : off + BLOCK]
        _read(st, other, off)
        total = len(_resolved(st, vid)) + len(_resolved(st, other))
        assert total <= budget.limit + 16
    assert budget.evicted > 0
    assert _resolved(st, vid) and _resolved(st, other)  # each keeps some
    for off in range(0, MiB, BLOCK):  # evicted or not, every block reads right
        assert _read(st, vid, off) == model[off : off + BLOCK]


@pytest.mark.local_only("pure memory accounting")
def test_entry_cost_is_what_an_entry_takes():
    """ENTRY_COST against what tracemalloc finds a map's entries hold: block numbers of a
    large volume as keys, places with 64-bit checksums as values."""
    import tracemalloc

    rng = random.Random(1)
    n = 50_000
    keys = rng.sample(range(1 << 28), n)
    vals = [place(rng.randrange(1, 1 << 20), rng.randrange(64, 1 << 32), rng.getrandbits(64)) for _ in range(n)]
    tracemalloc.start()
    d: dict[int, int] = {}
    for k, v in zip(keys, vals, strict=True):
        d[k + (1 << 20)] = v + 1  # new integers, as a map's own are
    real = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert 0.8 < ENTRY_COST / (real / n) < 1.25, real / n
