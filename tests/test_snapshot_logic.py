"""Snapshot logic without I/O: copy-on-write leaf sharing in VolumeMap, its serialized form,
space accounting and diffs, retention policies, and the catalog/state events of groups,
snapshots, rollbacks and clones. Chunk maps are checked against byte-per-byte models."""

from __future__ import annotations

import calendar
import json
import random
from collections import Counter
from dataclasses import dataclass, field

import pytest
from poolkit import Refs, origins_offset, per_segment

from vstor.errors import AlreadyExists, Busy, FormatError, NotFound, UsageError
from vstor.store.catalog.groups import Catalog, Policy, Snapshot
from vstor.store.catalog.policy import due, to_prune
from vstor.store.catalog.volumes import DEFAULT_GROUP
from vstor.store.journal.format import loc_segno, make_loc
from vstor.store.maps.accounting import account, changed_ranges, segment_live
from vstor.store.maps.chunkmap import EMPTY, LEAF_BITS, LEAF_SLOTS, Leaf, VolumeMap, remap_versions
from vstor.store.maps.mapstore import dump_maps, load_maps
from vstor.store.state import PoolState

CS = 1024
NCHUNKS = 5
WINDOW = NCHUNKS * CS
# The window straddles the boundary between leaf 0 and leaf 1 (as in test_chunkmap), so a
# family of maps holds several leaf keys and can share one while holding copies of the other.
BASE = (LEAF_SLOTS - 2) * CS
LEAF_BYTES = LEAF_SLOTS * CS  # volume bytes covered by one leaf
NOW = 1_700_000_000.0


# -- helpers: reference counts and byte models ---------------------------------------------------

def _expand(pieces: list, start: int, end: int) -> list[int]:
    """Per-byte locations of [start, end) from lookup() pieces, checking their shape."""
    out = [EMPTY] * (end - start)
    prev_end = start
    for s, e, loc in pieces:
        assert start <= s < e <= end, (s, e, start, end)
        assert s >= prev_end, "pieces overlap or are out of order"
        assert loc >= 1 << 32
        out[s - start : e - start] = [loc] * (e - s)
        prev_end = e
    return out


def _window(vm: VolumeMap) -> list[int]:
    """The model form (one loc per byte) of the map's window."""
    return _expand(vm.lookup(BASE, BASE + WINDOW), BASE, BASE + WINDOW)


def _model_pairs(model: list[int]) -> set[tuple[int, int]]:
    """(offset, loc) of every mapped byte of a model."""
    return {(off, loc) for off, loc in enumerate(model) if loc != EMPTY}


def _key_of(off: int) -> int:
    """Leaf key of a window offset."""
    return ((BASE + off) // CS) >> LEAF_BITS


WINDOW_KEYS = sorted({_key_of(o) for o in range(0, WINDOW, CS)})
KEY_SPAN = {k: (min(o for o in range(WINDOW) if _key_of(o) == k), max(o for o in range(WINDOW) if _key_of(o) == k) + 1)
            for k in WINDOW_KEYS}


def _leaf_object_totals(maps: list[VolumeMap], models: list[list[int]]) -> dict[int, int]:
    """What on_ref must have summed to: per *distinct leaf object*, the bytes each loc has in it.
    Derived from the models (any holder of a leaf has that leaf's bytes), not from the leaves."""
    seen: set[int] = set()
    totals: Counter = Counter()
    for vm, model in zip(maps, models, strict=True):
        for key, leaf in vm.leaves.items():
            if id(leaf) in seen:
                continue
            seen.add(id(leaf))
            a, b = KEY_SPAN[key]
            totals.update(model[a:b])
    totals.pop(EMPTY, None)
    return dict(totals)


def _holder_counts(maps: list[VolumeMap]) -> Counter:
    return Counter(id(leaf) for vm in maps for leaf in vm.leaves.values())


def _merged_ranges(offsets: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for o in sorted(offsets):
        if out and out[-1][1] == o:
            out[-1] = (out[-1][0], o + 1)
        else:
            out.append((o, o + 1))
    return out


def _random_range(rng: random.Random) -> tuple[int, int]:
    r = rng.random()
    if r < 0.3:  # whole chunks
        a = rng.randrange(NCHUNKS) * CS
        return a, rng.randrange(a // CS + 1, NCHUNKS + 1) * CS
    if r < 0.65:  # small: fragments chunks
        a = rng.randrange(WINDOW - 1)
        return a, min(WINDOW, a + rng.randrange(1, 200))
    a = rng.randrange(WINDOW - 1)
    return a, rng.randrange(a + 1, WINDOW + 1)


# -- helpers: a random family of maps (a volume, its snapshots, clones of those) ------------------

@dataclass
class Family:
    refs: Refs
    maps: list[VolumeMap] = field(default_factory=list)
    models: list[list[int]] = field(default_factory=list)
    frozen: list[bool] = field(default_factory=list)  # snapshots are never written
    used: list[int] = field(default_factory=list)

    def add(self, vm: VolumeMap, model: list[int], frozen: bool) -> None:
        self.maps.append(vm)
        self.models.append(model)
        self.frozen.append(frozen)

    def drop(self, i: int) -> None:
        self.maps.pop(i).release()
        self.models.pop(i)
        self.frozen.pop(i)


def _new_family() -> Family:
    refs = Refs()
    fam = Family(refs)
    fam.add(VolumeMap(CS, refs), [EMPTY] * WINDOW, False)  # index 0: the live volume
    return fam


def _random_step(rng: random.Random, fam: Family, step: int) -> None:
    """One random operation: write or trim a writable map, snapshot, clone or release."""
    writable = [i for i, f in enumerate(fam.frozen) if not f]
    snaps = [i for i, f in enumerate(fam.frozen) if f]
    r = rng.random()
    if r < 0.10 and len(fam.maps) < 12:  # snapshot of the volume or of a clone
        i = rng.choice(writable)
        fam.add(fam.maps[i].share(), list(fam.models[i]), True)
    elif r < 0.14 and snaps and len(fam.maps) < 12:  # clone of a snapshot: writable
        i = rng.choice(snaps)
        fam.add(fam.maps[i].share(), list(fam.models[i]), False)
    elif r < 0.18 and len(fam.maps) > 1:  # delete a snapshot or clone
        fam.drop(rng.randrange(1, len(fam.maps)))
    else:
        i = rng.choice(writable)
        a, b = _random_range(rng)
        model = fam.models[i]
        if rng.random() < 0.7:
            if fam.used and rng.random() < 0.2:
                loc = rng.choice(fam.used)  # the same record again (merging, equal pieces)
            else:
                loc = make_loc(1 + rng.randrange(4), 64 + step * 997)
                fam.used.append(loc)
            fam.maps[i].map(BASE + a, BASE + b, loc)
            model[a:b] = [loc] * (b - a)
        else:
            fam.maps[i].unmap(BASE + a, BASE + b)
            model[a:b] = [EMPTY] * (b - a)


def _random_family(seed: int, steps: int = 150) -> Family:
    rng = random.Random(seed)
    fam = _new_family()
    for step in range(steps):
        _random_step(rng, fam, step)
    # Make sure there is something to share and to diverge from.
    fam.add(fam.maps[0].share(), list(fam.models[0]), True)
    for step in range(steps, steps + 10):
        a, b = _random_range(rng)
        loc = make_loc(1 + rng.randrange(4), 64 + step * 997)
        fam.maps[0].map(BASE + a, BASE + b, loc)
        fam.models[0][a:b] = [loc] * (b - a)
    return fam


def _check_family(fam: Family) -> None:
    union: set[int] = set()
    for vm, model in zip(fam.maps, fam.models, strict=True):
        assert _window(vm) == model
        assert vm.mapped_bytes == WINDOW - model.count(EMPTY)
        union.update(model)
    union.discard(EMPTY)
    holders = _holder_counts(fam.maps)
    for vm in fam.maps:
        for leaf in vm.leaves.values():
            assert leaf.refs == holders[id(leaf)], "Leaf.refs must count the maps holding it"
    nonzero = fam.refs.nonzero()
    assert set(nonzero) == {x >> 32 for x in union}, "a segment is referenced iff its on_ref total is non-zero"
    assert nonzero == per_segment(_leaf_object_totals(fam.maps, fam.models))


# -- 1. copy-on-write isolation ------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_cow_snapshots_keep_their_content_under_random_writes(seed):
    """Snapshots (and clones of them) keep their own byte content while the maps they were
    shared from are written; on_ref totals stay per-leaf-object exact and return to zero."""
    rng = random.Random(seed)
    fam = _new_family()
    for step in range(250):
        _random_step(rng, fam, step)
        _check_family(fam)
    assert any(fam.frozen), "the run should have snapshots left"
    # With only the volume left, its references are exactly its bytes.
    while len(fam.maps) > 1:
        fam.drop(len(fam.maps) - 1)
        _check_family(fam)
    assert fam.refs.nonzero() == per_segment(dict(Counter(x for x in fam.models[0] if x != EMPTY)))
    fam.maps[0].unmap(BASE, BASE + WINDOW)
    assert fam.maps[0].leaves == {} and fam.maps[0].mapped_bytes == 0
    assert fam.refs.nonzero() == {}


def test_release_of_every_snapshot_then_unmap_returns_all_references():
    """Snapshots released in any order, then the volume trimmed: every on_ref total is zero."""
    for seed in range(3):
        fam = _random_family(seed)
        order = list(range(1, len(fam.maps)))
        random.Random(seed).shuffle(order)
        for i in order:
            fam.maps[i].release()
            assert fam.maps[i].leaves == {} and fam.maps[i].mapped_bytes == 0
        fam.maps[0].unmap(0, BASE + 2 * WINDOW)
        assert fam.refs.nonzero() == {}


# -- 2. share() copies nothing until a write -------------------------------------------------------

def test_share_copies_no_leaf_and_a_write_copies_only_the_touched_leaf():
    """share() hands out the same Leaf objects; a write copies just the leaf it touches."""
    refs = Refs()
    vm = VolumeMap(CS, refs)
    a, b, c, d, e = (make_loc(1, 64 + 4096 * i) for i in range(5))
    vm.map(0, 2 * CS, a)  # leaf 0
    vm.map(LEAF_BYTES + 100, LEAF_BYTES + 3000, b)  # leaf 1, fragmented chunks
    vm.map(2 * LEAF_BYTES, 2 * LEAF_BYTES + CS, c)  # leaf 2
    calls = refs.calls
    snap = vm.share()
    assert refs.calls == calls, "share() must not report references"
    assert snap.mapped_bytes == vm.mapped_bytes == 2 * CS + 2900 + CS
    assert set(snap.leaves) == {0, 1, 2}
    for k in (0, 1, 2):
        assert snap.leaves[k] is vm.leaves[k]
        assert vm.leaves[k].refs == 2

    old1 = vm.leaves[1]
    vm.map(LEAF_BYTES + 500, LEAF_BYTES + 600, d)
    assert vm.leaves[1] is not old1 and snap.leaves[1] is old1
    assert vm.leaves[0] is snap.leaves[0] and vm.leaves[2] is snap.leaves[2]
    assert old1.refs == 1 and vm.leaves[1].refs == 1
    assert vm.leaves[0].refs == 2 and vm.leaves[2].refs == 2
    # Counted per leaf object: the copy references b again.
    assert refs.nonzero() == per_segment({a: 2 * CS, b: 2900 + 2800, c: CS, d: 100})
    assert snap.lookup(LEAF_BYTES, LEAF_BYTES + CS * 3) == [(LEAF_BYTES + 100, LEAF_BYTES + 3000, b)]
    assert vm.lookup(LEAF_BYTES, LEAF_BYTES + CS * 3) == [
        (LEAF_BYTES + 100, LEAF_BYTES + 500, b), (LEAF_BYTES + 500, LEAF_BYTES + 600, d),
        (LEAF_BYTES + 600, LEAF_BYTES + 3000, b)]
    assert snap.mapped_bytes == 2 * CS + 2900 + CS and vm.mapped_bytes == 2 * CS + 2800 + 100 + CS

    # The live map owns its copy now: a second write there copies nothing.
    mine = vm.leaves[1]
    vm.map(LEAF_BYTES + 700, LEAF_BYTES + 800, e)
    assert vm.leaves[1] is mine and snap.leaves[1] is old1

    # Trimming a shared leaf empties only the live map's copy.
    vm.unmap(0, 2 * CS)
    assert 0 not in vm.leaves and snap.leaves[0].refs == 1
    assert snap.lookup(0, 2 * CS) == [(0, 2 * CS, a)]
    # A new leaf belongs to the live map only.
    vm.map(5 * LEAF_BYTES, 5 * LEAF_BYTES + 10, e)
    assert 5 in vm.leaves and 5 not in snap.leaves
    assert refs.nonzero() == per_segment({a: 2 * CS, b: 2900 + 2700, c: CS, d: 100, e: 110})

    snap.release()
    assert snap.leaves == {} and vm.leaves[2].refs == 1
    assert refs.nonzero() == per_segment({b: 2700, c: CS, d: 100, e: 110})
    assert vm.mapped_bytes == sum(refs.nonzero().values())


# -- 3. GC moves repoint every leaf version in place ------------------------------------------------

def _gc_move(maps: list[VolumeMap], start: int, end: int, old: int, new: int, on_ref: Refs) -> int:
    """What PoolState.relocate_all does: remap_versions over every distinct leaf version holding
    each chunk of the range (a shared overlay list is changed once, for all of them)."""
    moved = 0
    for chunk in range(start // CS, (end - 1) // CS + 1):
        key = chunk >> LEAF_BITS
        versions = {id(m.leaves[key]): m.leaves[key] for m in maps if key in m.leaves}
        moved += remap_versions(list(versions.values()), chunk, start, end, old, new, CS, on_ref)
    return moved


def test_gc_move_updates_every_holder_in_place():
    """A GC move rewrites the leaf versions themselves: every holder sees the new loc, only within
    the range and only for the old loc; no copy, mapped_bytes unchanged; references move once
    per leaf version."""
    refs = Refs()
    vm = VolumeMap(CS, refs)
    A, B, X = (make_loc(2, 64 + 4096 * i) for i in range(3))
    N = make_loc(3, 64)  # the GC copy lands in another segment
    vm.map(0, 3000, A)
    vm.map(1500, 1600, B)
    vm.map(LEAF_BYTES, LEAF_BYTES + CS, A)  # A in another leaf: outside the range
    s1, s2 = vm.share(), vm.share()
    clone = s1.share()
    clone.map(10, 20, X)  # the clone holds its own version of leaf 0
    maps = [vm, s1, s2, clone]
    leaf0 = vm.leaves[0]
    before = {id(m): m.mapped_bytes for m in maps}
    a_before = refs.total[A >> 32]

    moved = _gc_move(maps, 500, 2500, A, N, refs)
    assert moved == 2 * (2500 - 500 - 100)  # two leaf versions: the shared one and the clone's
    want = [(0, 500, A), (500, 1500, N), (1500, 1600, B), (1600, 2500, N), (2500, 3000, A)]
    for m in (vm, s1, s2):
        assert m.leaves[0] is leaf0 and m.lookup(0, 3000) == want
        assert m.lookup(LEAF_BYTES, LEAF_BYTES + CS) == [(LEAF_BYTES, LEAF_BYTES + CS, A)]
    assert leaf0.refs == 3
    assert clone.lookup(0, 3000) == [(0, 10, A), (10, 20, X), (20, 500, A), *want[1:]]
    assert {id(m): m.mapped_bytes for m in maps} == before
    assert refs.total[N >> 32] == moved and refs.total[A >> 32] == a_before - moved
    assert _gc_move(maps, 500, 2500, A, N, refs) == 0  # nothing left to move


@pytest.mark.parametrize("seed", range(4))
def test_gc_move_random_against_model(seed):
    """GC moves on a random family: every map's bytes of ``old`` inside the range now reference
    ``new``, nothing else changes, and the reference totals stay exact per leaf version."""
    rng = random.Random(100 + seed)
    fam = _random_family(seed)
    for step in range(30):
        i = rng.randrange(len(fam.maps))
        locs = sorted({x for x in fam.models[i] if x != EMPTY})
        if not locs:
            continue
        old, new = rng.choice(locs), make_loc(9, 64 + step)
        a, b = _random_range(rng)
        mapped = [m.mapped_bytes for m in fam.maps]
        for model in fam.models:
            model[a:b] = [new if x == old else x for x in model[a:b]]
        _gc_move(fam.maps, BASE + a, BASE + b, old, new, fam.refs)
        assert [m.mapped_bytes for m in fam.maps] == mapped
        _check_family(fam)


# -- 4. mapstore keeps sharing ---------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_dump_load_keeps_content_sharing_and_reference_totals(seed):
    """Serialized maps reload with the same content, the same leaf sharing (one object per
    shared leaf, refs = holders) and the same per-leaf-object on_ref totals."""
    fam = _random_family(seed)
    blob = dump_maps(fam.maps)
    refs2 = Refs()
    loaded = load_maps(blob, CS, refs2)
    assert len(loaded) == len(fam.maps)
    for vm, m2, model in zip(fam.maps, loaded, fam.models, strict=True):
        assert _window(m2) == model
        assert m2.mapped_bytes == vm.mapped_bytes
        assert m2.leaves == vm.leaves  # Leaf equality: same slots and overlays
    keys = sorted({k for vm in fam.maps for k in vm.leaves})
    for i in range(len(fam.maps)):
        for j in range(i + 1, len(fam.maps)):
            for k in keys:
                li, lj = fam.maps[i].leaves.get(k), fam.maps[j].leaves.get(k)
                same = li is not None and li is lj
                l2i, l2j = loaded[i].leaves.get(k), loaded[j].leaves.get(k)
                assert (l2i is not None and l2i is l2j) == same, (i, j, k)
    holders = _holder_counts(loaded)
    assert all(leaf.refs == holders[id(leaf)] for m in loaded for leaf in m.leaves.values())
    assert len(holders) == len(_holder_counts(fam.maps))
    assert refs2.nonzero() == fam.refs.nonzero()
    # The reloaded family is copy-on-write like the original.
    fam2 = Family(refs2, loaded, [list(m) for m in fam.models], list(fam.frozen))
    fam2.maps[0].map(BASE, BASE + WINDOW, make_loc(7, 64))
    fam2.models[0] = [make_loc(7, 64)] * WINDOW
    _check_family(fam2)


def test_load_maps_shares_extent_tuples_and_chunk_numbers():
    """Versions of an overlay list repeat most extents. In memory they share the tuples, and
    after a reload they must share them again (one tuple per distinct extent, one int per chunk
    number), or a restart with many snapshots multiplies the daemon's memory."""
    refs = Refs()
    v = VolumeMap(CS, refs)
    v.map(0, 300, make_loc(1, 64))
    v.map(300, 400, make_loc(1, 9000))
    snaps = []
    for n in range(5):
        snaps.append(v.share())
        v.map(500 + n, 501 + n, make_loc(2, 64 * (n + 1)))  # a new list version for chunk 0
    loaded = load_maps(dump_maps([v, *snaps]), CS, Refs())
    lists = [m.leaves[0].overlays[0] for m in loaded]
    assert len({id(x) for x in lists}) == 6
    first = {t: t for t in lists[-1]}
    for lst in lists:
        for t in lst:
            if t in first:
                assert t is first[t]
    keys = [next(iter(m.leaves[0].overlays)) for m in loaded]
    assert all(k is keys[0] for k in keys)


@pytest.mark.parametrize("seed", range(3))
def test_reloaded_leaves_count_gc_moves_and_writes_before_their_totals_exist(seed):
    """Reloaded leaves compute their per-segment totals only when first needed; GC moves and
    writes made before that must still be counted right when the maps are released."""
    fam = _random_family(seed)
    refs2 = Refs()
    loaded = load_maps(dump_maps(fam.maps), CS, refs2)
    fam2 = Family(refs2, loaded, [list(m) for m in fam.models], list(fam.frozen))
    assert all(leaf.segs is None for m in loaded for leaf in m.leaves.values())
    rng = random.Random(seed)
    for _ in range(6):  # GC moves of random pieces of records, into segment 9
        o = rng.randrange(WINDOW)
        old = next((m[o] for m in fam2.models if m[o] != EMPTY), EMPTY)
        if old == EMPTY:
            continue
        a, b = o, min(WINDOW, (o // CS + 1) * CS, o + rng.randrange(1, 300))
        new = make_loc(9, 64 + o)
        _gc_move(fam2.maps, BASE + a, BASE + b, old, new, refs2)
        for m in fam2.models:
            m[a:b] = [new if x == old else x for x in m[a:b]]
    _check_family(fam2)
    fam2.maps[0].map(BASE, BASE + 100, make_loc(8, 64))
    fam2.models[0][:100] = [make_loc(8, 64)] * 100
    while len(fam2.maps) > 1:
        fam2.drop(len(fam2.maps) - 1)
        _check_family(fam2)


def test_load_maps_rejects_truncated_corrupted_or_padded_blobs():
    """Every damaged blob raises FormatError, never another exception or a silent result."""
    fam = _random_family(7)
    assert fam.maps[-1].leaves
    blob = dump_maps(fam.maps)
    rng = random.Random(7)
    cuts = {0, 1, 3, 4, 5, len(blob) - 1, len(blob) - 4, len(blob) - 12}
    cuts.update(rng.randrange(len(blob)) for _ in range(150))
    for n in sorted(cuts):
        with pytest.raises(FormatError):
            load_maps(blob[:n], CS, Refs())
    with pytest.raises(FormatError):
        load_maps(blob + b"\0", CS, Refs())
    at = origins_offset(blob)
    bad_index = blob[: at - 4] + (0xFFFFFFFF).to_bytes(4, "little") + blob[at:]  # the last key's leaf index
    with pytest.raises(FormatError):
        load_maps(bad_index, CS, Refs())
    nleaves = int.from_bytes(blob[:4], "little")
    for n in (nleaves + 1, 0xFFFFFFFF):
        with pytest.raises(FormatError):
            load_maps(n.to_bytes(4, "little") + blob[4:], CS, Refs())
    with pytest.raises(FormatError):
        load_maps(b"", CS, Refs())


# -- 5. account --------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_account_matches_byte_model(seed):
    """account(): exclusive = (offset, loc) bytes no other map references, shared = the rest of
    the map's bytes; union = distinct (offset, loc) bytes of the ``own`` maps."""
    fam = _random_family(seed)
    rng = random.Random(seed)
    sets = [_model_pairs(m) for m in fam.models]
    counts = Counter(p for s in sets for p in s)
    want = [(sum(1 for p in s if counts[p] == 1), sum(1 for p in s if counts[p] > 1)) for s in sets]
    for _ in range(4):
        own = sorted(rng.sample(range(len(fam.maps)), rng.randrange(len(fam.maps) + 1)))
        got, union = account(fam.maps, own)
        assert got == want
        assert union == len(set().union(*(sets[i] for i in own)))
        some = rng.sample(range(len(fam.maps)), rng.randrange(len(fam.maps) + 1))
        got, _union = account(fam.maps, own, want=some)
        assert got == [want[i] if i in some else (0, vm.mapped_bytes) for i, vm in enumerate(fam.maps)]
    assert account([], ()) == ([], 0)


def test_account_with_many_distinct_versions_of_one_chunk():
    """40 snapshots, each after a write to the same chunks: more distinct contents per chunk than
    the counting shortcut handles (fragmented chunk 0, whole-chunk rewrites of chunk 1)."""
    fam = _new_family()
    for step in range(40):
        a = (step * 37) % (CS - 16)
        for lo, hi, loc in ((a, a + 16, make_loc(1, 64 + step * 997)), (CS, 2 * CS, make_loc(2, 64 + step * 997))):
            fam.maps[0].map(BASE + lo, BASE + hi, loc)
            fam.models[0][lo:hi] = [loc] * (hi - lo)
        if step % 3:
            fam.add(fam.maps[0].share(), list(fam.models[0]), True)
    sets = [_model_pairs(m) for m in fam.models]
    counts = Counter(p for s in sets for p in s)
    want = [(sum(1 for p in s if counts[p] == 1), sum(1 for p in s if counts[p] > 1)) for s in sets]
    assert any(x for x, _ in want[1:]), "some snapshot must hold exclusive bytes"
    got, union = account(fam.maps, range(len(fam.maps)))
    assert got == want
    assert union == len(set().union(*sets))
    assert account(fam.maps)[0] == want


def test_account_cuts_fragments_of_different_versions():
    """A chunk dense in one version and split differently in two others: shared bytes are the
    (offset, loc) bytes the versions have in common, whatever the extent boundaries."""
    refs = Refs()
    L, M, P = make_loc(1, 64), make_loc(2, 64), make_loc(3, 64)
    v = VolumeMap(CS, refs)
    v.map(0, CS, L)
    s1 = v.share()
    v.map(100, 200, M)  # v: L M L
    s2 = v.share()
    v.map(150, 600, P)  # v: L M P L
    got, union = account([s1, s2, v], [0, 1, 2])
    # s1: L over [0, 1024). s2: L[0,100) M[100,200) L[200,1024). v: L[0,100) M[100,150) P[150,600) L[600,1024)
    # L[0,100): all three; L[200,600): s1+s2; L[600,1024): all three; M[100,150): s2+v; M[150,200): s2 only;
    # L[100,200): s1 only; P[150,600): v only.
    assert got == [(100, 924), (50, 974), (450, 574)]
    assert union == CS + 100 + 450
    assert account([s1, s2, v], [0])[1] == CS
    # Two versions only: s1 dense, s2 split.
    assert account([s1, s2], [0, 1]) == ([(100, 924), (100, 924)], CS + 100)
    assert account([s2, s1, s2.share()], [1]) == ([(0, CS), (100, 924), (0, CS)], CS)
    leaves = {0: [s1.leaves[0], s2.leaves[0]]}
    assert segment_live(leaves, CS) == {1: CS, 2: 100}


# -- 6. changed_ranges ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_changed_ranges_matches_byte_model(seed):
    """changed_ranges(a, b) = merged sorted ranges of the offsets whose loc differs."""
    fam = _random_family(seed)
    other = _random_family(seed + 50)  # unrelated maps: no shared leaf at all
    maps, models = fam.maps + other.maps[:2], fam.models + other.models[:2]
    pairs = [(i, j) for i in range(len(maps)) for j in range(len(maps)) if i != j]
    for i, j in random.Random(seed).sample(pairs, min(25, len(pairs))):
        want = [(BASE + s, BASE + e) for s, e in
                _merged_ranges([o for o in range(WINDOW) if models[i][o] != models[j][o]])]
        assert changed_ranges(maps[i], maps[j]) == want, (i, j)
    for vm in maps:
        twin = vm.share()
        assert changed_ranges(vm, twin) == [] and changed_ranges(twin, vm) == []
        twin.release()
    empty = VolumeMap(CS)
    want = [(BASE + s, BASE + e) for s, e in _merged_ranges([o for o in range(WINDOW) if models[0][o] != EMPTY])]
    assert changed_ranges(empty, maps[0]) == want


def test_changed_ranges_join_across_chunks_and_leaves():
    """A change spanning chunk and leaf boundaries is one range; unchanged data is not reported."""
    v = VolumeMap(CS)
    v.map(0, 3 * LEAF_BYTES, make_loc(1, 64))
    s = v.share()
    v.map(LEAF_BYTES - 10, LEAF_BYTES + CS + 5, make_loc(1, 9000))
    v.unmap(2 * LEAF_BYTES + 7, 2 * LEAF_BYTES + 9)
    assert changed_ranges(s, v) == [(LEAF_BYTES - 10, LEAF_BYTES + CS + 5), (2 * LEAF_BYTES + 7, 2 * LEAF_BYTES + 9)]


# -- 7. segment_live -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_segment_live_counts_each_piece_once(seed):
    """segment_live = distinct (offset, loc) bytes over the maps, summed per segment."""
    fam = _random_family(seed)
    by_key: dict[int, list[Leaf]] = {}
    for vm in fam.maps:
        for key, leaf in vm.leaves.items():
            if all(leaf is not x for x in by_key.setdefault(key, [])):
                by_key[key].append(leaf)
    pairs = set().union(*(_model_pairs(m) for m in fam.models))
    want = Counter(loc_segno(loc) for _off, loc in pairs)
    assert len(want) > 1
    assert segment_live(by_key, CS) == dict(want)


# -- 8. retention policy -------------------------------------------------------------------------

DAY0 = calendar.timegm((2024, 3, 10, 0, 0, 0))


def _snap(sid: int, created: float, auto: bool = True) -> Snapshot:
    return Snapshot(sid, f"s{sid}", "volume", 1, "vol", created, sid, members=[], auto=auto)


def _hm(day: int, h: int, m: int = 0, s: int = 0) -> float:
    return DAY0 + day * 86400 + h * 3600 + m * 60 + s


# day 0: 1, 2, 3 (3 at 23:59:59); day 1: 4 (00:00:00), 5; day 2: none; day 3: 6, 7, 8
SNAPS = [_snap(1, _hm(0, 1)), _snap(2, _hm(0, 12)), _snap(3, _hm(0, 23, 59, 59)), _snap(4, _hm(1, 0)),
         _snap(5, _hm(1, 8)), _snap(6, _hm(3, 5)), _snap(7, _hm(3, 6)), _snap(8, _hm(3, 7))]


def _prune_ids(policy: Policy, snaps: list[Snapshot]) -> list[int]:
    shuffled = list(snaps)
    random.Random(len(snaps)).shuffle(shuffled)
    out = to_prune(policy, shuffled)
    assert all(any(s is x for x in snaps) for s in out), "to_prune returned a snapshot not passed in"
    assert len({s.id for s in out}) == len(out)
    return [s.id for s in out]


def test_due():
    """A snapshot is due with none yet or when the newest is at least ``every`` old."""
    p = Policy(every=3600, keep_last=1)
    assert due(p, [], NOW)
    assert not due(p, [_snap(1, NOW - 100)], NOW)
    assert not due(p, [_snap(1, NOW - 7200), _snap(2, NOW - 10)], NOW)  # the newest counts
    assert not due(p, [_snap(1, NOW - 3599)], NOW)
    assert due(p, [_snap(1, NOW - 3600)], NOW)
    assert due(p, [_snap(2, NOW - 4000), _snap(1, NOW - 9000)], NOW)


def test_to_prune_keep_last():
    """keep_last keeps the N newest; the rest go, oldest first."""
    assert _prune_ids(Policy(60, keep_last=2), SNAPS) == [1, 2, 3, 4, 5, 6]
    assert _prune_ids(Policy(60, keep_last=8), SNAPS) == []
    assert _prune_ids(Policy(60, keep_last=20), SNAPS) == []
    assert _prune_ids(Policy(60, keep_last=1), SNAPS[:3]) == [1, 2]


def test_to_prune_keep_daily():
    """keep_daily keeps the newest of each of the N most recent UTC days that have snapshots."""
    assert _prune_ids(Policy(60, keep_daily=1), SNAPS) == [1, 2, 3, 4, 5, 6, 7]
    assert _prune_ids(Policy(60, keep_daily=2), SNAPS) == [1, 2, 3, 4, 6, 7]  # day 2 has none
    assert _prune_ids(Policy(60, keep_daily=3), SNAPS) == [1, 2, 4, 6, 7]  # 23:59:59 is day 0
    assert _prune_ids(Policy(60, keep_daily=30), SNAPS) == [1, 2, 4, 6, 7]


def test_to_prune_keep_last_and_daily_is_a_union():
    assert _prune_ids(Policy(60, keep_last=2, keep_daily=2), SNAPS) == [1, 2, 3, 4, 6]
    assert _prune_ids(Policy(60, keep_last=4, keep_daily=3), SNAPS) == [1, 2, 4]
    assert _prune_ids(Policy(60, keep_last=1, keep_daily=1), SNAPS) == [1, 2, 3, 4, 5, 6, 7]


def test_to_prune_only_returns_given_snapshots():
    assert to_prune(Policy(60, keep_last=1), []) == []
    subset = [SNAPS[0], SNAPS[5], SNAPS[7]]
    assert _prune_ids(Policy(60, keep_last=1), subset) == [1, 6]
    assert _prune_ids(Policy(60, keep_daily=1), subset) == [1, 6]


# -- 9. catalog and state events ------------------------------------------------------------------

SZ = 4 * LEAF_BYTES  # 4 MiB volumes: several leaves at CS = 1024


def _pool(*names: str, size: int = SZ) -> PoolState:
    st = PoolState(CS)
    for name in names:
        st.apply_event(st.make_volume_create(name, size, NOW))
    return st


def _vid(st: PoolState, name: str) -> int:
    return st.table.get(name).id


def _snapshot(st: PoolState, owner: str, name: str | None = None, now: float = NOW) -> Snapshot:
    ev = st.catalog.make_snapshot(st.table, st.group_seq, owner, name, now)
    st.apply_event(ev)
    return st.catalog.snaps[ev["sid"]]


def _group(st: PoolState, name: str, volumes: list[str]) -> None:
    st.apply_event(st.catalog.make_group_create(st.table, name, volumes, NOW))


def _content(vm: VolumeMap, size: int = 2 * SZ) -> list:
    return vm.lookup(0, size)


def _fill(vm: VolumeMap, seed: int) -> None:
    """Some whole-chunk and fragmented data over several leaves."""
    rng = random.Random(seed)
    for i in range(12):
        a = rng.randrange(SZ - 5000)
        vm.map(a, a + rng.randrange(1, 5000), make_loc(1 + seed % 3, 64 + 8192 * i))


def _check_live(st: PoolState) -> None:
    """PoolState.live is the per-leaf-object reference count, grouped by segment."""
    want: Counter = Counter()
    seen: set[int] = set()
    for vm in st.all_maps():
        for key, leaf in vm.leaves.items():
            if id(leaf) not in seen:
                seen.add(id(leaf))
                for _chunk, extents in leaf.extents(key, CS):
                    for s, e, loc in extents:
                        want[loc_segno(loc)] += e - s
    assert dict(st.live) == {k: v for k, v in want.items() if v}


def _one_line_not_found(fn, *args) -> str:
    with pytest.raises(NotFound) as ei:
        fn(*args)
    msg = str(ei.value)
    assert msg and "\n" not in msg
    return msg


def test_group_create_add_remove_delete():
    """Group membership follows the events; a volume is in at most one group."""
    st = _pool("a", "b", "c")
    _group(st, "g", ["a", "b"])
    g = st.catalog.group("g")
    assert st.table.get("a").group == g.id and st.table.get("b").group == g.id
    assert st.table.get("c").group == DEFAULT_GROUP
    assert st.catalog.members(st.table, "group", g.id) == [_vid(st, "a"), _vid(st, "b")]
    _group(st, "h", [])
    h = st.catalog.group("h")
    assert h.id != g.id
    with pytest.raises(Busy):
        st.catalog.make_group_add(st.table, "h", "a")
    with pytest.raises(Busy):
        st.catalog.make_group_create(st.table, "h2", ["c", "a"], NOW)
    with pytest.raises(AlreadyExists):
        st.catalog.make_group_add(st.table, "g", "a")
    with pytest.raises(NotFound):
        st.catalog.make_group_remove(st.table, "g", "c")
    st.apply_event(st.catalog.make_group_add(st.table, "h", "c"))
    assert st.table.get("c").group == h.id
    with pytest.raises(Busy):
        st.catalog.make_group_delete(st.table, "g")  # still has members
    st.apply_event(st.catalog.make_group_remove(st.table, "g", "a"))
    assert st.table.get("a").group == DEFAULT_GROUP
    st.apply_event(st.catalog.make_group_add(st.table, "h", "a"))
    assert st.table.get("a").group == h.id
    st.apply_event(st.catalog.make_group_remove(st.table, "g", "b"))
    st.apply_event(st.catalog.make_group_delete(st.table, "g"))
    assert st.catalog.find_group("g") is None
    _group(st, "g2", [])
    assert st.catalog.group("g2").id > h.id, "group ids are never reused"


def test_group_and_volume_names_share_one_namespace():
    st = _pool("a")
    _group(st, "g", [])
    with pytest.raises(AlreadyExists):
        st.catalog.make_group_create(st.table, "a", [], NOW)
    with pytest.raises(AlreadyExists):
        st.catalog.make_group_create(st.table, "g", [], NOW)
    with pytest.raises(AlreadyExists):
        st.make_volume_create("g", SZ, NOW)
    with pytest.raises(AlreadyExists):
        st.make_volume_create("a", SZ, NOW)
    with pytest.raises(UsageError):
        st.catalog.make_group_create(st.table, "bad name", [], NOW)


def test_snapshot_name_clash_and_empty_group_are_refused():
    st = _pool("a", "b")
    _group(st, "g", ["b"])
    _group(st, "empty", [])
    _snapshot(st, "a", "s1")
    with pytest.raises(AlreadyExists):
        st.catalog.make_snapshot(st.table, st.group_seq, "a", "s1", NOW)
    _snapshot(st, "g", "s1")  # names are per owner
    _snapshot(st, "b", "s1")
    with pytest.raises(AlreadyExists):
        st.catalog.make_snapshot(st.table, st.group_seq, "g", "s1", NOW)
    with pytest.raises(UsageError):
        st.catalog.make_snapshot(st.table, st.group_seq, "empty", None, NOW)
    # Generated names do not clash either.
    n1 = _snapshot(st, "a", None, NOW + 5).name
    n2 = _snapshot(st, "a", None, NOW + 5).name
    assert n1 != n2


def test_volume_delete_refuses_group_members_and_volumes_with_snapshots():
    st = _pool("a", "b")
    _group(st, "g", ["a"])
    with pytest.raises(Busy):
        st.make_volume_delete("a")
    s = _snapshot(st, "b", "s1")
    with pytest.raises(Busy):
        st.make_volume_delete("b")
    st.apply_event(st.catalog.make_snapshot_delete(s))
    assert st.snap_maps == {}
    ev = st.make_volume_delete("b")
    st.apply_event(ev)
    assert st.table.find("b") is None and _vid(st, "a") in st.maps and len(st.maps) == 1


def test_group_delete_refuses_a_group_with_snapshots():
    st = _pool("a")
    _group(st, "g", ["a"])
    _snapshot(st, "g", "s")
    st.apply_event(st.catalog.make_group_remove(st.table, "g", "a"))
    with pytest.raises(Busy):
        st.catalog.make_group_delete(st.table, "g")


def test_unknown_names_give_one_line_not_found():
    st = _pool("a")
    _group(st, "g", ["a"])
    s = _snapshot(st, "g", "s1")
    cat, t = st.catalog, st.table
    msgs = [
        _one_line_not_found(cat.group, "nope"),
        _one_line_not_found(cat.make_group_add, t, "nope", "a"),
        _one_line_not_found(cat.make_group_add, t, "g", "nope"),
        _one_line_not_found(cat.make_group_remove, t, "nope", "a"),
        _one_line_not_found(cat.make_group_delete, t, "nope"),
        _one_line_not_found(cat.make_snapshot, t, st.group_seq, "nope", None, NOW),
        _one_line_not_found(cat.snapshot, t, "g", "nope"),
        _one_line_not_found(cat.snapshot, t, "nope", "s1"),
        _one_line_not_found(cat.make_policy, t, "nope", None),
        _one_line_not_found(st.make_volume_delete, "nope"),
        _one_line_not_found(s.member, "nope"),
    ]
    assert all("nope" in m for m in msgs)


def test_snap_create_shares_leaves_with_the_live_maps():
    """A snapshot event shares every leaf of each member map (no copy) and records the cut."""
    st = _pool("a", "b", "c")
    _group(st, "g", ["a", "b"])
    for i, name in enumerate(("a", "b", "c")):
        _fill(st.maps[_vid(st, name)], i)
    gid = st.catalog.group("g").id
    st.group_seq[gid] = 7
    calls_live = dict(st.live)
    s = _snapshot(st, "g", "s1")
    assert dict(st.live) == calls_live, "a snapshot adds no reference"
    assert s.kind == "group" and s.seq == 7 and [m.name for m in s.members] == ["a", "b"]
    assert set(st.snap_maps) == {(s.id, _vid(st, "a")), (s.id, _vid(st, "b"))}
    for m in s.members:
        live, snap = st.maps[m.vid], st.snap_maps[(s.id, m.vid)]
        assert m.size == SZ and m.lineage == [m.vid] and snap.lineage == (m.vid,)
        assert live.leaves and set(snap.leaves) == set(live.leaves)
        assert all(snap.leaves[k] is live.leaves[k] and live.leaves[k].refs == 2 for k in live.leaves)
        frozen = _content(snap)
        live.map(0, SZ, make_loc(5, 64))
        assert _content(snap) == frozen and _content(live) == [(0, SZ, make_loc(5, 64))]
    _check_live(st)
    vs = _snapshot(st, "c", "v1")
    assert vs.kind == "volume" and [m.vid for m in vs.members] == [_vid(st, "c")]
    _check_live(st)


def test_rollback_restores_content_and_size_after_a_safety_snapshot():
    """Rollback: a safety snapshot of the current state first, then the live map becomes a share
    of the snapshot's map and the size goes back (after a grow)."""
    st = _pool("a")
    vid = _vid(st, "a")
    vm = st.maps[vid]
    _fill(vm, 1)
    s1 = _snapshot(st, "a", "s1")
    want = _content(st.snap_maps[(s1.id, vid)])
    vm.map(100, 200, make_loc(4, 64))
    vm.unmap(LEAF_BYTES, LEAF_BYTES + 5000)
    st.apply_event(st.table.make_resize("a", 2 * SZ, allow_shrink=False))
    vm.map(SZ + 10, SZ + 5000, make_loc(4, 8192))
    current = _content(vm)
    assert current != want
    ev = st.catalog.make_rollback(st.table, st.group_seq, s1, NOW + 60)
    assert [e["op"] for e in ev["events"]] == ["snap_create", "rollback"]
    safety_name = ev["events"][0]["name"]
    assert safety_name.startswith("pre-rollback-")
    st.apply_event(ev)
    live = st.maps[vid]
    assert _content(live) == want
    assert st.table.by_id[vid].size == SZ
    assert live.lineage == (vid,)
    assert all(live.leaves[k] is st.snap_maps[(s1.id, vid)].leaves[k] for k in live.leaves)
    safety = st.catalog.snapshot(st.table, "a", safety_name)
    assert safety.members[0].size == 2 * SZ
    assert _content(st.snap_maps[(safety.id, vid)]) == current
    live.map(0, CS, make_loc(6, 64))  # the rolled-back volume is copy-on-write again
    assert _content(st.snap_maps[(s1.id, vid)]) == want
    _check_live(st)


def test_group_rollback_after_shrink_restores_every_member():
    st = _pool("a", "b")
    _group(st, "g", ["a", "b"])
    a, b = _vid(st, "a"), _vid(st, "b")
    _fill(st.maps[a], 1)
    _fill(st.maps[b], 2)
    st.maps[a].map(SZ - 3000, SZ, make_loc(2, 999))  # data in the tail a shrink drops
    s = _snapshot(st, "g", "s")
    want = {v: _content(st.maps[v]) for v in (a, b)}
    st.apply_event(st.table.make_resize("a", SZ // 2, allow_shrink=True))
    assert _content(st.maps[a])[-1][1] <= SZ // 2
    st.maps[b].map(0, 3 * CS, make_loc(3, 4096))
    current = {v: _content(st.maps[v]) for v in (a, b)}
    ev = st.catalog.make_rollback(st.table, st.group_seq, s, NOW + 1)
    assert [e["op"] for e in ev["events"]] == ["snap_create", "rollback"]
    st.apply_event(ev)
    assert {v: _content(st.maps[v]) for v in (a, b)} == want
    assert st.table.by_id[a].size == SZ and st.table.by_id[b].size == SZ
    safety = st.catalog.snaps[ev["events"][0]["sid"]]
    assert {v: _content(st.snap_maps[(safety.id, v)]) for v in (a, b)} == current
    _check_live(st)


def test_rollback_touches_only_current_members_all_covered_by_the_safety_snapshot():
    """A volume that left the group since the snapshot is not rolled back (its data written
    since stays), and every volume a rollback overwrites is in its safety snapshot."""
    st = _pool("a", "b")
    _group(st, "g", ["a", "b"])
    a, b = _vid(st, "a"), _vid(st, "b")
    s = _snapshot(st, "g", "s")
    st.apply_event(st.catalog.make_group_remove(st.table, "g", "b"))
    st.maps[b].map(0, CS, make_loc(3, 64))  # written after leaving the group
    b_before = _content(st.maps[b])
    ev = st.catalog.make_rollback(st.table, st.group_seq, s, NOW + 1)
    safety, rollback = ev["events"]
    assert rollback["volumes"] == [a]
    assert {m["vid"] for m in safety["members"]} >= set(rollback["volumes"])
    st.apply_event(ev)
    assert _content(st.maps[b]) == b_before
    st.apply_event(st.catalog.make_group_remove(st.table, "g", "a"))
    with pytest.raises(UsageError):
        st.catalog.make_rollback(st.table, st.group_seq, s, NOW + 2)


def test_clone_of_group_and_volume_snapshots():
    """Clones are named PREFIX-VOL (group) or PREFIX (volume), hold the snapshot's content, and
    their lineage is the member's plus their own id."""
    st = _pool("a", "b")
    _group(st, "g", ["a", "b"])
    a, b = _vid(st, "a"), _vid(st, "b")
    _fill(st.maps[a], 1)
    _fill(st.maps[b], 2)
    gs = _snapshot(st, "g", "gs")
    st.maps[a].map(0, SZ, make_loc(3, 64))  # the live volume moves on
    ev = st.catalog.make_clone(st.table, gs, "c", NOW)
    assert [e["name"] for e in ev["events"]] == ["c-a", "c-b"]
    st.apply_event(ev)
    for m in gs.members:
        vol = st.table.get(f"c-{m.name}")
        snap_map = st.snap_maps[(gs.id, m.vid)]
        assert vol.lineage == [*m.lineage, vol.id] and vol.clone_of == [gs.id, m.vid]
        assert vol.size == m.size and vol.group == DEFAULT_GROUP
        assert st.maps[vol.id].lineage == tuple(vol.lineage)
        assert _content(st.maps[vol.id]) == _content(snap_map)
    assert _content(st.maps[st.table.get("c-a").id]) != _content(st.maps[a])
    with pytest.raises(AlreadyExists):
        st.catalog.make_clone(st.table, gs, "c", NOW)

    vs = _snapshot(st, "a", "vs")
    with pytest.raises(AlreadyExists):
        st.catalog.make_clone(st.table, vs, "g", NOW)  # a group's name
    st.apply_event(st.catalog.make_clone(st.table, vs, "solo", NOW))
    solo = st.table.get("solo")
    assert solo.lineage == [a, solo.id]
    assert _content(st.maps[solo.id]) == [(0, SZ, make_loc(3, 64))]
    # A clone of a clone carries the whole lineage; writing to it leaves the snapshot alone.
    cs = _snapshot(st, "solo", "x")
    st.apply_event(st.catalog.make_clone(st.table, cs, "solo2", NOW))
    solo2 = st.table.get("solo2")
    assert solo2.lineage == [a, solo.id, solo2.id]
    st.maps[solo2.id].map(0, 10, make_loc(4, 64))
    assert _content(st.snap_maps[(cs.id, solo.id)]) == [(0, SZ, make_loc(3, 64))]
    _check_live(st)


def test_relocate_all_moves_references_in_every_holder():
    """A GC move of a volume's record reaches its live map, snapshots and clones (via lineage),
    whichever leaf versions they hold; other volumes are untouched."""
    st = _pool("a", "b")
    a, b = _vid(st, "a"), _vid(st, "b")
    old, new, other = make_loc(1, 64), make_loc(2, 64), make_loc(1, 99999)
    st.maps[a].map(0, 3000, old)
    st.maps[b].map(0, 3000, old)  # not in a's lineage (cannot happen for real): must stay
    s = _snapshot(st, "a", "s")
    st.apply_event(st.catalog.make_clone(st.table, s, "c", NOW))
    c = _vid(st, "c")
    st.maps[a].map(1000, 1100, other)  # the live map now holds its own leaf version
    st.maps[c].map(2000, 2100, other)  # and so does the clone
    st.relocate_all(a, 0, 3000, old, new)
    assert _content(st.maps[a]) == [(0, 1000, new), (1000, 1100, other), (1100, 3000, new)]
    assert _content(st.maps[c]) == [(0, 2000, new), (2000, 2100, other), (2100, 3000, new)]
    assert _content(st.snap_maps[(s.id, a)]) == [(0, 3000, new)]
    assert _content(st.maps[b]) == [(0, 3000, old)]
    # A record written by the clone: its own map and its snapshots hold it, a's maps cannot.
    mine, moved = make_loc(3, 64), make_loc(3, 8192)
    st.maps[c].map(5000, 6000, mine)
    cs = _snapshot(st, "c", "cs")
    st.maps[c].map(5500, 5600, other)
    st.relocate_all(c, 0, SZ, mine, moved)
    assert _content(st.maps[c])[-3:] == [(5000, 5500, moved), (5500, 5600, other), (5600, 6000, moved)]
    assert _content(st.snap_maps[(cs.id, c)])[-1] == (5000, 6000, moved)
    _check_live(st)


def test_holders_follow_every_event_that_adds_or_drops_maps():
    """PoolState.holders is cached between events: after each kind of event that adds, replaces
    or drops maps, it names exactly the maps whose lineage holds the volume, even when the
    cache was filled just before."""
    st = _pool("a", "b")
    a, b = _vid(st, "a"), _vid(st, "b")

    def apply(ev: dict) -> None:
        for vid in [*st.table.by_id, a, b]:
            st.holders(vid)  # fill the cache, so a stale entry would show below
        st.apply_event(ev)
        for vid in {*st.table.by_id, a, b}:
            want = [vm for vm in st.all_maps() if vid in vm.lineage]
            assert [id(vm) for vm in st.holders(vid)] == [id(vm) for vm in want], (ev["op"], vid)

    apply(st.catalog.make_snapshot(st.table, st.group_seq, "a", "s1", NOW))
    s1 = st.catalog.snapshot(st.table, "a", "s1")
    apply(st.catalog.make_clone(st.table, s1, "c", NOW))
    c = _vid(st, "c")
    apply(st.catalog.make_snapshot(st.table, st.group_seq, "c", "cs", NOW))
    apply(st.catalog.make_rollback(st.table, st.group_seq, s1, NOW))
    apply(st.make_volume_create("d", SZ, NOW))
    apply(st.catalog.make_snapshot_delete(st.catalog.snapshot(st.table, "c", "cs")))
    for snap in st.catalog.snapshots_of("volume", a):  # s1 and the rollback's safety snapshot
        apply(st.catalog.make_snapshot_delete(snap))
    assert sorted(vm.lineage for vm in st.holders(a)) == [(a,), (a, c)]  # the clone keeps a's lineage
    apply(st.make_volume_delete("c"))
    apply(st.make_volume_delete("b"))
    assert st.holders(b) == [] and [vm.lineage for vm in st.holders(a)] == [(a,)]
    back = PoolState.from_checkpoint(CS, st.meta_json(), st.maps_blob())
    assert [vm.lineage for vm in back.holders(a)] == [(a,)]


def test_catalog_json_round_trip():
    """to_json/from_json (through JSON text) give an equal catalog that keeps counting ids."""
    st = _pool("a", "b")
    _group(st, "g", ["a", "b"])
    _snapshot(st, "g", "s1")
    st.apply_event(st.catalog.make_snapshot(st.table, st.group_seq, "a", None, NOW + 3, auto=True))
    st.apply_event(st.catalog.make_policy(st.table, "g", Policy(3600, keep_last=3, keep_daily=7)))
    st.apply_event(st.catalog.make_policy(st.table, "a", Policy(60, keep_daily=1)))
    _group(st, "gone", [])
    st.apply_event(st.catalog.make_group_delete(st.table, "gone"))
    cat = st.catalog
    back = Catalog.from_json(json.loads(json.dumps(cat.to_json())))
    assert back == cat
    assert back.to_json() == cat.to_json()
    assert Catalog.from_json(None) == Catalog()
    st.catalog = back
    ev = back.make_snapshot(st.table, st.group_seq, "g", "s2", NOW)
    assert ev["sid"] == max(cat.snaps) + 1


def test_policy_events_validate_and_apply():
    st = _pool("a")
    _group(st, "g", ["a"])
    for bad in (Policy(59, keep_last=1), Policy(60), Policy(60, keep_last=-1, keep_daily=2)):
        with pytest.raises(UsageError):
            st.catalog.make_policy(st.table, "g", bad)
    st.apply_event(st.catalog.make_policy(st.table, "g", Policy(60, keep_last=2)))
    gid = st.catalog.group("g").id
    assert st.catalog.policies == {f"group:{gid}": Policy(60, keep_last=2)}
    st.apply_event(st.catalog.make_policy(st.table, "g", None))
    assert st.catalog.policies == {}
    st.apply_event(st.catalog.make_policy(st.table, "g", Policy(60, keep_daily=1)))
    st.apply_event(st.catalog.make_group_remove(st.table, "g", "a"))
    st.apply_event(st.catalog.make_group_delete(st.table, "g"))
    assert st.catalog.policies == {}, "deleting a group drops its policy"


def test_pool_state_checkpoint_round_trip_keeps_sharing():
    """meta_json + maps_blob reload to the same table, catalog, map content, leaf sharing
    between volumes, snapshots and clones, and the same live bytes per segment."""
    st = _pool("a", "b")
    _group(st, "g", ["a", "b"])
    for i, name in enumerate(("a", "b")):
        _fill(st.maps[_vid(st, name)], i)
    s = _snapshot(st, "g", "s")
    st.maps[_vid(st, "a")].map(0, 100, make_loc(4, 64))
    st.apply_event(st.catalog.make_clone(st.table, s, "c", NOW))
    meta = json.loads(json.dumps(st.meta_json()))
    st2 = PoolState.from_checkpoint(CS, meta, st.maps_blob())
    assert st2.table.to_json() == st.table.to_json()
    assert st2.catalog == st.catalog
    assert dict(st2.live) == dict(st.live)
    assert set(st2.maps) == set(st.maps) and set(st2.snap_maps) == set(st.snap_maps)
    old = list(st.all_maps())
    new = list(st2.all_maps())
    for m1, m2 in zip(old, new, strict=True):
        assert _content(m2) == _content(m1) and m2.lineage == m1.lineage
    for i in range(len(old)):
        for j in range(i + 1, len(old)):
            for k in set(old[i].leaves) | set(old[j].leaves):
                same = old[i].leaves.get(k) is not None and old[i].leaves.get(k) is old[j].leaves.get(k)
                assert (new[i].leaves.get(k) is not None and new[i].leaves.get(k) is new[j].leaves.get(k)) == same
    _check_live(st2)


def test_overlay_lists_shared_by_a_copy_are_never_changed_in_place():
    """A leaf changes an overlay list in place only while no other leaf shares it: after V copies
    a leaf it shared with snapshot S, a clone of S that later holds that leaf alone must not
    change the lists V's copy still uses."""
    refs = Refs()
    v = VolumeMap(CS, refs)
    v.map(0, 100, make_loc(1, 64))
    v.map(200, 300, make_loc(1, 128))  # chunk 0 fragmented; its list is owned by v's leaf
    s = v.share()
    v.map(CS + 500, CS + 600, make_loc(2, 64))  # v copies the leaf (chunk 1); the copy shares chunk 0's list
    v_before = v.lookup(0, CS)
    clone = s.share()
    s.release()  # the original leaf is now held by the clone alone
    clone.map(250, 260, make_loc(3, 64))  # changes chunk 0 in the clone's leaf
    clone.map(10, 20, make_loc(3, 128))
    assert v.lookup(0, CS) == v_before
    assert clone.lookup(0, CS) == [(0, 10, make_loc(1, 64)), (10, 20, make_loc(3, 128)), (20, 100, make_loc(1, 64)),
                                   (200, 250, make_loc(1, 128)), (250, 260, make_loc(3, 64)),
                                   (260, 300, make_loc(1, 128))]


def test_gc_remap_changes_a_shared_overlay_list_once_and_counts_every_version():
    """Leaf versions that share an overlay list: a GC move changes the list once, in place, and
    moves the references of every version, as a recount from scratch finds them."""
    st = _pool("a")
    a = _vid(st, "a")
    vm = st.maps[a]
    old, other = make_loc(2, 64), make_loc(2, 9000)
    vm.map(0, 300, old)
    vm.map(300, 400, other)  # chunk 0 fragmented: one list
    for n in range(3):  # each snapshot, then a write elsewhere in the leaf: new versions share chunk 0's list
        st.apply_event(st.catalog.make_snapshot(st.table, st.group_seq, "a", f"s{n}", NOW))
        vm.map(CS * (n + 2), CS * (n + 3), make_loc(3, 64 * (n + 1)))
    lists = {id(m.leaves[0].overlays[0]) for m in st.all_maps()}
    versions = {id(m.leaves[0]) for m in st.all_maps()}
    assert len(lists) == 1 and len(versions) == 4
    new = make_loc(5, 64)
    assert st.relocate_all(a, 100, 200, old, new) == 4 * 100
    for m in st.all_maps():
        assert m.lookup(0, 400) == [(0, 100, old), (100, 200, new), (200, 300, old), (300, 400, other)]
    assert len({id(m.leaves[0].overlays[0]) for m in st.all_maps()}) == 1  # still one shared list
    recount = PoolState.from_checkpoint(CS, st.meta_json(), st.maps_blob())
    assert dict(recount.live) == dict(st.live)


def test_gc_move_inside_a_whole_chunk_gives_every_version_one_shared_list():
    """A GC move of part of a chunk that several versions map whole fragments it in all of them
    with one new list, shared like a copy's, not one list per version (accounting groups
    versions by list; a list per version made it compare every version with every other)."""
    st = _pool("a")
    a = _vid(st, "a")
    vm = st.maps[a]
    old = make_loc(2, 64)
    vm.map(0, CS, old)
    for n in range(3):
        st.apply_event(st.catalog.make_snapshot(st.table, st.group_seq, "a", f"s{n}", NOW))
        vm.map(CS * (n + 2), CS * (n + 3), make_loc(3, 64 * (n + 1)))
    new = make_loc(5, 64)
    assert st.relocate_all(a, 100, 200, old, new) == 4 * 100
    lists = [m.leaves[0].overlays[0] for m in st.all_maps()]
    assert len(lists) == 4 and all(x is lists[0] for x in lists)
    assert lists[0] == [(0, 100, old), (100, 200, new), (200, CS, old)]
    vm.map(150, 160, make_loc(6, 64))  # the live map changes its own copy, not the shared list
    assert lists[0] == [(0, 100, old), (100, 200, new), (200, CS, old)]
    assert vm.lookup(0, CS)[2] == (150, 160, make_loc(6, 64))
    recount = PoolState.from_checkpoint(CS, st.meta_json(), st.maps_blob())
    assert dict(recount.live) == dict(st.live)
