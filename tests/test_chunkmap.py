"""VolumeMap (vstor.store.maps.chunkmap) against a byte-per-byte reference model."""

from __future__ import annotations

import random
from collections import Counter
from itertools import pairwise

import pytest
from poolkit import Refs, per_segment

from vstor.errors import FormatError
from vstor.store.journal.format import make_loc
from vstor.store.maps.chunkmap import EMPTY, FRAGMENTED, LEAF_SLOTS, VolumeMap
from vstor.store.maps.mapstore import dump_maps, load_maps

CS = 1024
NCHUNKS = 5
WINDOW = NCHUNKS * CS
# The window straddles the boundary between leaf 0 and leaf 1, so leaves are created and
# dropped on both sides.
BASE = (LEAF_SLOTS - 2) * CS


def _expand(pieces: list, start: int, end: int) -> list[int]:
    """Per-byte locations of [start, end) from lookup() pieces, checking their shape."""
    out = [EMPTY] * (end - start)
    prev_end = start
    prev = None
    for s, e, loc in pieces:
        assert start <= s < e <= end, (s, e, start, end)
        assert s >= prev_end, "pieces overlap or are out of order"
        assert loc >= 1 << 32
        if prev is not None and prev[1] == s and prev[2] == loc and s % CS:
            raise AssertionError(f"unmerged neighbours inside one chunk: {prev} {(s, e, loc)}")
        out[s - start : e - start] = [loc] * (e - s)
        prev_end, prev = e, (s, e, loc)
    return out


def _check(vm: VolumeMap, model: list[int], refs: Refs) -> None:
    got = _expand(vm.lookup(BASE, BASE + WINDOW), BASE, BASE + WINDOW)
    assert got == model
    counts = Counter(loc for loc in model if loc != EMPTY)
    assert refs.nonzero() == per_segment(dict(counts))
    assert vm.mapped_bytes == sum(counts.values())
    allocated = 0
    for i in range(NCHUNKS):
        chunk = BASE // CS + i
        part = model[i * CS : (i + 1) * CS]
        slot = vm._slot(chunk)
        if all(x == EMPTY for x in part):
            assert slot == EMPTY and chunk not in vm.overlays
            assert vm.chunk_extents(chunk) == []
            continue
        allocated += 1
        if all(x == part[0] for x in part):
            assert slot == part[0], "a chunk covered by one record must use the dense slot"
            assert chunk not in vm.overlays
        else:
            assert slot == FRAGMENTED and chunk in vm.overlays
    assert vm.allocated_chunks() == allocated
    assert set(vm.overlays) <= {BASE // CS + i for i in range(NCHUNKS)}
    for ext in vm.overlays.values():
        assert all(x[1] <= y[0] for x, y in pairwise(ext)), "overlay extents out of order or overlapping"
        assert not any(x[1] == y[0] and x[2] == y[2] for x, y in pairwise(ext)), "pieces of one record not joined"
    for leaf in vm.leaves.values():
        assert leaf.slots.count(EMPTY) < LEAF_SLOTS, "an all-empty leaf was kept"


def _random_range(rng: random.Random) -> tuple[int, int]:
    if rng.random() < 0.3:  # chunk aligned, one or more whole chunks
        a = rng.randrange(NCHUNKS) * CS
        b = rng.randrange(a // CS + 1, NCHUNKS + 1) * CS
    elif rng.random() < 0.5:  # small
        a = rng.randrange(WINDOW - 1)
        b = min(WINDOW, a + rng.randrange(1, 200))
    else:
        a = rng.randrange(WINDOW - 1)
        b = rng.randrange(a + 1, WINDOW + 1)
    return a, b


def _check_covering(vm: VolumeMap, model: list[int], rng: random.Random) -> None:
    """covering() of a random small range: the record of the one extent of its chunk that holds
    it all (a walk of chunk_extents), else EMPTY; a record it names holds every byte."""
    s = rng.randrange(WINDOW)
    e = min(WINDOW, s + rng.randrange(1, CS // 2 + 1))
    got = vm.covering(BASE + s, BASE + e)
    chunk = (BASE + s) // CS
    want = EMPTY
    if (BASE + e - 1) // CS == chunk:
        want = next((loc for s0, e0, loc in vm.chunk_extents(chunk) if s0 <= BASE + s and BASE + e <= e0), EMPTY)
    assert got == want, (s, e, got, want)
    if got != EMPTY:
        assert set(model[s:e]) == {got}


@pytest.mark.parametrize("seed", range(8))
def test_random_map_unmap_matches_model(seed):
    rng = random.Random(seed)
    refs = Refs()
    vm = VolumeMap(CS, refs)
    model = [EMPTY] * WINDOW
    used: list[int] = []
    for step in range(300):
        a, b = _random_range(rng)
        if rng.random() < 0.65:
            if used and rng.random() < 0.2:
                loc = rng.choice(used)  # the same record again, to exercise merging
            else:
                loc = make_loc(1 + step // 50, 64 + step * 1000)
                used.append(loc)
            vm.map(BASE + a, BASE + b, loc)
            model[a:b] = [loc] * (b - a)
        else:
            vm.unmap(BASE + a, BASE + b)
            model[a:b] = [EMPTY] * (b - a)
        _check(vm, model, refs)
        # Random windows, including ones reaching outside the mapped area.
        for _ in range(3):
            s = rng.randrange(-CS, WINDOW + CS)
            e = rng.randrange(s + 1, WINDOW + 2 * CS)
            s, e = max(0, BASE + s), BASE + e
            got = _expand(vm.lookup(s, e), s, e)
            padded = [EMPTY] * CS + model + [EMPTY] * 2 * CS
            want = padded[s - BASE + CS : e - BASE + CS]
            assert got == want
        for _ in range(6):
            _check_covering(vm, model, rng)

    # Serialization reproduces the map and its references.
    blob = dump_maps([vm])
    refs2 = Refs()
    (vm2,) = load_maps(blob, CS, refs2)
    with pytest.raises(FormatError):
        load_maps(blob + b"trailing", CS, Refs())
    _check(vm2, model, refs2)
    assert refs2.nonzero() == refs.nonzero()
    assert vm2.leaves == vm.leaves and vm2.overlays == vm.overlays
    assert list(vm2.iter_chunks()) == list(vm.iter_chunks())

    # Unmapping everything frees every leaf and overlay and returns every reference.
    vm.unmap(BASE, BASE + WINDOW)
    assert vm.leaves == {} and vm.overlays == {}
    assert vm.mapped_bytes == 0
    assert refs.nonzero() == {}
    assert vm.lookup(0, BASE + 2 * WINDOW) == []


def test_iter_chunks_lists_allocated_chunks_in_order():
    refs = Refs()
    vm = VolumeMap(CS, refs)
    l1, l2, l3 = (make_loc(1, 64 + i) for i in range(3))
    far = 5 * LEAF_SLOTS + 3
    vm.map(far * CS, (far + 1) * CS, l3)
    vm.map(0, 2 * CS, l1)
    vm.map(CS + 10, CS + 20, l2)
    assert list(vm.iter_chunks()) == [
        (0, [(0, CS, l1)]),
        (1, [(CS, CS + 10, l1), (CS + 10, CS + 20, l2), (CS + 20, 2 * CS, l1)]),
        (far, [(far * CS, (far + 1) * CS, l3)]),
    ]
    assert sorted(vm.leaves) == [0, 5]
    assert vm.allocated_chunks() == 3


def test_partial_writes_that_complete_a_chunk_become_dense():
    refs = Refs()
    vm = VolumeMap(CS, refs)
    a, b = make_loc(1, 64), make_loc(1, 9999)
    vm.map(0, 100, a)
    assert vm._slot(0) == FRAGMENTED
    vm.map(100, CS, a)  # the rest of the chunk from the same record
    assert vm._slot(0) == a and vm.overlays == {}
    vm.map(10, 20, b)
    assert vm._slot(0) == FRAGMENTED and len(vm.overlays[0]) == 3
    vm.map(0, CS, b)  # a whole-chunk overwrite drops the overlay
    assert vm._slot(0) == b and vm.overlays == {}
    assert refs.nonzero() == per_segment({b: CS})
    vm.unmap(0, 1)
    vm.unmap(1, CS)
    assert vm.leaves == {} and vm.overlays == {} and refs.nonzero() == {}


@pytest.mark.parametrize("case", ["before", "after", "inside"])
def test_a_record_mapped_again_joins_the_pieces_it_touches(case):
    """A record mapped again (GC and replay map one record in pieces) is joined with a piece of
    the same record right before it, right after it, or left of the extent it replaced."""
    refs = Refs()
    vm = VolumeMap(CS, refs)
    r, x = make_loc(1, 64), make_loc(1, 9999)
    if case == "before":
        vm.map(0, 100, r)
        vm.map(100, 300, x)
        vm.map(100, 200, r)
        want = [(0, 200, r), (200, 300, x)]
    elif case == "after":
        vm.map(0, 100, x)
        vm.map(100, 300, r)
        vm.map(50, 100, r)
        want = [(0, 50, x), (50, 300, r)]
    else:  # the extent replaced is of the record itself: its left pieces join the new one
        vm.map(0, 300, r)
        vm.map(300, 400, x)
        vm.map(100, 350, r)
        want = [(0, 350, r), (350, 400, x)]
    assert vm.overlays == {0: want}
    assert refs.nonzero() == per_segment({loc: sum(e - s for s, e, lc in want if lc == loc) for loc in (r, x)})


def test_full_chunk_writes_use_dense_slots():
    refs = Refs()
    vm = VolumeMap(CS, refs)
    loc = make_loc(3, 4096)
    vm.map(CS, 4 * CS, loc)  # one record over three whole chunks
    assert vm.overlays == {}
    assert [vm._slot(c) for c in range(5)] == [EMPTY, loc, loc, loc, EMPTY]
    assert refs.nonzero() == per_segment({loc: 3 * CS})
    # A write spanning a partial head, whole chunks and a partial tail.
    loc2 = make_loc(3, 8192)
    vm.map(CS // 2, 4 * CS + 7, loc2)
    assert vm._slot(1) == loc2 and vm._slot(2) == loc2 and vm._slot(3) == loc2
    assert vm._slot(0) == FRAGMENTED and vm._slot(4) == FRAGMENTED
    assert set(vm.overlays) == {0, 4}
    assert refs.nonzero() == per_segment({loc2: 3 * CS + CS // 2 + 7})


def test_untouched_huge_volume_holds_nothing():
    cs = 512 * 1024
    size = 1 << 40
    refs = Refs()
    vm = VolumeMap(cs, refs)
    assert vm.lookup(0, size) == []
    vm.unmap(size - 10 * cs, size)  # a trim of an unmapped range allocates nothing
    assert vm.leaves == {} and vm.overlays == {} and refs.calls == 0
    assert vm.allocated_chunks() == 0 and list(vm.iter_chunks()) == []
    loc = make_loc(1, 64)
    vm.map(size - 4096, size, loc)
    assert len(vm.leaves) == 1 and vm.lookup(size - cs, size) == [(size - 4096, size, loc)]
    vm.unmap(size - cs, size)
    assert vm.leaves == {} and vm.overlays == {} and vm.mapped_bytes == 0
    assert len(dump_maps([vm])) == 4 + 4 + 4 + 12 + 4  # no lists, no leaves, one empty map, no origins


def test_memory_is_about_eight_bytes_per_full_chunk():
    cs = 512 * 1024
    n = 100_000
    vm = VolumeMap(cs)
    for i in range(n):
        vm.map(i * cs, (i + 1) * cs, make_loc(1 + i // 100, 64 + (i % 100) * cs))
    assert vm.overlays == {}
    assert vm.allocated_chunks() == n
    assert vm.mapped_bytes == n * cs
    leaf_bytes = len(vm.leaves) * 8 * LEAF_SLOTS
    assert leaf_bytes / n <= 8.2
    assert all(leaf.slots.itemsize == 8 for leaf in vm.leaves.values())


def test_chunk_size_must_be_a_power_of_two():
    for bad in (0, -4096, 3000, 4097):
        with pytest.raises(ValueError):
            VolumeMap(bad)


def test_covering_names_the_one_record_that_holds_a_small_range():
    vm = VolumeMap(CS)
    whole, older, newer = make_loc(1, 64), make_loc(2, 64), make_loc(3, 64)
    vm.map(0, CS, whole)  # chunk 0: one record, a dense slot
    vm.map(CS, 2 * CS, older)
    vm.map(CS + 100, CS + 200, newer)  # chunk 1: older, newer, older
    assert vm.covering(10, 20) == whole and vm.covering(0, CS) == whole
    assert vm.covering(CS, CS + 100) == older and vm.covering(CS + 200, 2 * CS) == older
    assert vm.covering(CS + 100, CS + 200) == newer and vm.covering(CS + 150, CS + 151) == newer
    assert vm.covering(CS + 50, CS + 150) == EMPTY  # two extents
    assert vm.covering(CS - 10, CS + 10) == EMPTY  # two chunks, though each is mapped
    assert vm.covering(5 * CS, 5 * CS + 10) == EMPTY  # a hole
    assert vm.covering(10, 10) == EMPTY  # nothing
    vm.unmap(CS, CS + 50)
    assert vm.covering(CS, CS + 10) == EMPTY and vm.covering(CS + 50, CS + 60) == older
