"""Leaf lineage (vstor/store/maps/lineage.py): what a copy records about the leaf it came from, and
space accounting that relies on it, checked against byte-per-byte models while the family
of maps is written, snapshotted, cloned, pruned, moved by GC and reloaded from a checkpoint.
The family helpers and the models are those of test_snapshot_logic."""

from __future__ import annotations

import gc
import random
import struct
import weakref
from collections import Counter

import pytest
from poolkit import Refs, origins_offset
from test_snapshot_logic import (
    BASE,
    CS,
    EMPTY,
    Family,
    _gc_move,
    _model_pairs,
    _random_family,
    _random_range,
    _random_step,
    _window,
)

from vstor.errors import FormatError
from vstor.store.journal.format import loc_segno, make_loc
from vstor.store.maps.accounting import account, segment_live
from vstor.store.maps.chunkmap import LEAF_SLOTS, Leaf, VolumeMap
from vstor.store.maps.lineage import Lineage, link
from vstor.store.maps.mapstore import dump_maps, load_maps


def _expected(fam: Family) -> tuple[list[tuple[int, int]], list[set]]:
    sets = [_model_pairs(m) for m in fam.models]
    counts = Counter(p for s in sets for p in s)
    return [(sum(1 for p in s if counts[p] == 1), sum(1 for p in s if counts[p] > 1)) for s in sets], sets


def _check_account(fam: Family, rng: random.Random) -> None:
    want, sets = _expected(fam)
    own = sorted(rng.sample(range(len(fam.maps)), rng.randrange(len(fam.maps) + 1)))
    got, union = account(fam.maps, own)
    assert got == want
    assert union == len(set().union(*(sets[i] for i in own)))
    by_key: dict[int, dict[int, Leaf]] = {}
    for vm in fam.maps:
        for key, leaf in vm.leaves.items():
            by_key.setdefault(key, {})[id(leaf)] = leaf
    live = segment_live({k: list(v.values()) for k, v in by_key.items()}, CS)
    assert live == dict(Counter(loc_segno(loc) for _o, loc in set().union(*sets)))


def _reload(fam: Family, origins: bool) -> Family:
    """The family as a restart sees it: maps loaded from their checkpoint form, with the leaves'
    origins (checkpoint version 4) or without (version 3)."""
    refs = Refs()
    blob = dump_maps(fam.maps)
    if not origins:
        blob = blob[: origins_offset(blob)]
    loaded = load_maps(blob, CS, refs, origins)
    return Family(refs, loaded, [list(m) for m in fam.models], list(fam.frozen), list(fam.used))


@pytest.mark.parametrize("seed", range(6))
def test_account_stays_exact_as_the_family_changes_between_accountings(seed):
    """Accounting caches origins on leaves (linked roots) and relies on the ones copies record.
    Between accountings the family keeps changing: writes, trims, snapshots, clones, deletions
    (whose leaves' copies lose their origin), in-place writes of leaves whose other holders went
    away, GC moves and reloads. Every accounting must still match the byte model."""
    rng = random.Random(seed)
    fam = _random_family(seed, steps=60)
    step = 1000
    for round_ in range(16):
        _check_account(fam, rng)
        for _ in range(rng.randrange(1, 12)):
            _random_step(rng, fam, step)
            step += 1
        r = rng.random()
        if r < 0.3:
            i = rng.randrange(len(fam.maps))
            locs = sorted({x for x in fam.models[i] if x != EMPTY})
            if locs:
                old, new = rng.choice(locs), make_loc(9, 64 + round_)
                a, b = _random_range(rng)
                for model in fam.models:
                    model[a:b] = [new if x == old else x for x in model[a:b]]
                _gc_move(fam.maps, BASE + a, BASE + b, old, new, fam.refs)
        elif r < 0.45:
            fam = _reload(fam, origins=r < 0.4)
        for vm, model in zip(fam.maps, fam.models, strict=True):
            assert _window(vm) == model


def test_a_copy_records_its_parent_and_the_chunks_it_changed():
    v = VolumeMap(CS)
    v.map(0, 8 * CS, make_loc(1, 64))
    snap = v.share()
    parent = v.leaves[0]
    v.map(3 * CS, 4 * CS, make_loc(1, 9000))  # whole chunk 3
    v.map(5 * CS + 10, 5 * CS + 20, make_loc(1, 9000))  # fragments chunk 5
    v.map(5 * CS + 30, 5 * CS + 40, make_loc(1, 9000))  # again: an owned list changed in place
    child = v.leaves[0]
    assert child is not parent and snap.leaves[0] is parent
    ref, gen, bits = child.origin
    assert ref() is parent and gen == parent.gen
    assert bits == 1 << 3 | 1 << 5
    assert parent.origin is None  # a leaf created by a write has no parent
    lin = Lineage([parent, child], [True, True])
    assert lin.parent == [-1, 0] and lin.cuts == {3: [1], 5: [1]}
    assert lin.components(0) == [(0, 2, 2)]
    assert lin.components(3) == [(0, 1, 1), (1, 1, 1)]


def test_a_parent_changed_in_place_no_longer_vouches_for_its_copies():
    """A snapshot deleted while a clone holds the same leaf leaves the clone its only holder,
    which then writes it in place: the volume's copy of that leaf must not be accounted as
    agreeing with it where the clone wrote."""
    A, B, C = make_loc(1, 64), make_loc(2, 64), make_loc(3, 64)
    v = VolumeMap(CS)
    v.map(0, 4 * CS, A)
    snap = v.share()
    v.map(0, CS, B)  # v copies the leaf: its origin is the snapshot's leaf
    clone = snap.share()
    snap.release()  # the clone is now the parent leaf's only holder
    parent = clone.leaves[0]
    assert parent.refs == 1 and v.leaves[0].origin[0]() is parent
    clone.map(2 * CS, 3 * CS, C)  # in place: no copy
    assert clone.leaves[0] is parent and v.leaves[0].origin[1] != parent.gen
    # v: B A A A; clone: A A C A. Shared: A at chunks 1 and 3.
    got, union = account([v, clone], [0, 1])
    assert got == [(2 * CS, 2 * CS), (2 * CS, 2 * CS)]
    assert union == 6 * CS


def _family_of_snapshots() -> list[VolumeMap]:
    v = VolumeMap(CS)
    v.map(0, 16 * CS, make_loc(1, 64))
    maps = [v]
    for n in range(6):
        maps.append(v.share())
        v.map(n * CS, n * CS + 100, make_loc(2, 64 + 4096 * n))
    return maps


def test_origins_survive_a_checkpoint():
    """Version 4 blobs carry each leaf's origin: parent by index, and the changed slots."""
    maps = _family_of_snapshots()
    loaded = load_maps(dump_maps(maps), CS, Refs())
    for m, m2 in zip(maps, loaded, strict=True):
        o, o2 = m.leaves[0].origin, m2.leaves[0].origin
        assert (o is None) == (o2 is None)
        if o is not None:
            assert o2[2] == o[2] and o2[1] == o2[0]().gen
            j = next(k for k, x in enumerate(maps) if x.leaves[0] is o[0]())
            assert o2[0]() is loaded[j].leaves[0]
    assert account(loaded, range(len(loaded))) == account(maps, range(len(maps)))


def test_origin_section_is_checked():
    blob = dump_maps(_family_of_snapshots())
    at = origins_offset(blob)
    assert struct.unpack_from("<I", blob, at)[0] == 6
    for bad in (struct.pack("<II", 1, 1), struct.pack("<II", 0, 99)):
        with pytest.raises(FormatError):
            load_maps(blob[: at + 4] + bad + blob[at + 12 :], CS, Refs())
    with pytest.raises(FormatError):
        load_maps(blob[:-1], CS, Refs())
    with pytest.raises(FormatError):  # a version 4 blob read as version 3 has trailing bytes
        load_maps(blob, CS, Refs(), origins=False)


def test_reloaded_leaves_are_linked_once_and_the_links_are_kept():
    """Leaves loaded from a version 3 checkpoint have no origin: the first accounting links
    each to the previous version of its key and keeps the link, which later accountings use
    as they are."""
    maps = _family_of_snapshots()
    blob = dump_maps(maps)
    loaded = load_maps(blob[: origins_offset(blob)], CS, Refs(), origins=False)
    leaves = [m.leaves[0] for m in loaded]
    assert all(leaf.origin is None for leaf in leaves)
    first = account(loaded, range(len(loaded)))
    linked = [leaf.origin for leaf in leaves]
    assert linked[0] is None and all(o is not None for o in linked[1:])
    assert [o[0]() for o in linked[1:]] == leaves[:-1]
    assert account(loaded, range(len(loaded))) == first
    assert [leaf.origin for leaf in leaves] == linked  # kept, not derived again
    assert first == account(maps, range(len(maps)))


def test_link_marks_every_slot_and_list_that_differs():
    a = Leaf()
    a.slots[1] = make_loc(1, 64)
    a.overlays[7] = [(7 * CS, 7 * CS + 10, make_loc(1, 128))]
    a.slots[7] = 1
    a.overlays[9] = [(9 * CS, 9 * CS + 10, make_loc(1, 128))]
    a.slots[9] = 1
    b = Leaf(a.slots.__copy__(), dict(a.overlays))
    b.slots[2] = make_loc(1, 256)  # a slot set
    b.overlays[7] = [(7 * CS, 7 * CS + 20, make_loc(1, 128))]  # a list replaced
    del b.overlays[9]  # a list dropped
    b.slots[9] = 0
    b.overlays[11] = [(11 * CS, 11 * CS + 10, make_loc(1, 128))]  # a list added
    b.slots[11] = 1
    assert link(b, a) == 1 << 2 | 1 << 7 | 1 << 9 | 1 << 11
    assert b.origin[0]() is a and b.origin[1] == a.gen
    assert link(Leaf(a.slots.__copy__(), dict(a.overlays)), a) == 0


def test_a_freed_parent_leaves_a_root_and_accounting_stays_exact():
    v = VolumeMap(CS)
    v.map(0, LEAF_SLOTS * CS, make_loc(1, 64))
    s1 = v.share()
    v.map(0, CS, make_loc(2, 64))
    s2 = v.share()
    v.map(CS, 2 * CS, make_loc(3, 64))
    s1.release()
    gc.collect()
    assert s2.leaves[0].origin[0]() is None  # its parent was s1's leaf
    got, union = account([v, s2], [0, 1])
    assert got == [(CS, (LEAF_SLOTS - 1) * CS), (CS, (LEAF_SLOTS - 1) * CS)]
    assert union == (LEAF_SLOTS + 1) * CS


def test_an_origin_cycle_is_cut_and_accounting_stays_exact():
    """Two accountings linking concurrently could each link one leaf to the other."""
    v = VolumeMap(CS)
    v.map(0, 4 * CS, make_loc(1, 64))
    s = v.share()
    v.map(0, CS, make_loc(2, 64))
    a, b = s.leaves[0], v.leaves[0]
    a.origin = (weakref.ref(b), b.gen, 1)  # a claims to come from b, and b from a
    assert b.origin[0]() is a
    got, union = account([s, v], [0, 1])
    assert got == [(CS, 3 * CS), (CS, 3 * CS)]
    assert union == 5 * CS
    assert (a.origin is None) != (b.origin is None)


def test_components_of_a_tree():
    """Root 0 with children 1 and 2; 3 is a child of 1. Version 1 changed slot 5, version 3
    changed it back or again: groups {0, 2}, {1}, {3}."""
    leaves = [Leaf() for _ in range(4)]
    leaves[1].origin = (weakref.ref(leaves[0]), 0, 1 << 5)
    leaves[2].origin = (weakref.ref(leaves[0]), 0, 0)
    leaves[3].origin = (weakref.ref(leaves[1]), 0, 1 << 5)
    lin = Lineage(leaves, [True, False, True, True])
    assert sorted(lin.components(5)) == [(0, 2, 2), (1, 1, 0), (3, 1, 1)]
    assert lin.components(4) == [(0, 4, 3)]

