"""Padding records (REC_PAD): a backend that wants aligned appends (RADOS) gets every large
record followed by zeros up to its alignment, and every reader passes over them.

Run on a local pool whose backend asks for the alignment RADOS asks for, so that make test
covers it without Ceph; the [rados] variants of test_journal and test_commit_marker run the
real backend (make test-rados)."""

from __future__ import annotations

import os
import random

import pytest
from poolkit import MiB, make_pool, seg_append, seg_cut, seg_size, seg_write

from vstor.store.backend.local import LocalBackend
from vstor.store.check import check_pool
from vstor.store.journal.consumers import read_group, read_records
from vstor.store.journal.format import (
    MAX_PAD_STORED,
    REC_PAD,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    BadRecord,
    loc_pos,
    loc_segno,
    pack_padding,
    padding_after,
    unpack_record_header,
)
from vstor.store.journal.writer import ALIGN_FROM
from vstor.store.store import Store
from vstor.store.superblock import load_superblock

ALIGN = 4096


class AlignedLocal(LocalBackend):
    append_alignment = ALIGN


def open_aligned(pool: str) -> Store:
    return Store.open(pool, backend=AlignedLocal(pool))


def test_padding_size_reaches_the_next_boundary_and_is_a_whole_record():
    assert padding_after(8192, ALIGN) == 0
    assert padding_after(8192 - 100, ALIGN) == 100
    assert padding_after(8192 - 64, ALIGN) == 64
    assert padding_after(8192 - 63, ALIGN) == 63 + ALIGN  # too small for a header: one block more
    assert padding_after(8193, ALIGN) == ALIGN - 1
    for size in (RECORD_HEADER_SIZE, 100, ALIGN + 63):
        raw = pack_padding(size, 5, 1)
        assert len(raw) == size
        header, _ = unpack_record_header(raw)
        assert (header.rtype, header.total_size, header.nframes, header.length) == (REC_PAD, size, 0, 0)
    with pytest.raises(ValueError):
        pack_padding(RECORD_HEADER_SIZE - 1, 0, 1)
    with pytest.raises(ValueError):
        pack_padding(RECORD_HEADER_SIZE + MAX_PAD_STORED + 1, 0, 1)


def test_a_padding_header_that_claims_data_or_too_much_is_refused():
    raw = bytearray(pack_padding(200, 5, 1))
    raw[32:36] = (7).to_bytes(4, "little")  # length
    with pytest.raises(BadRecord):
        unpack_record_header(bytes(raw))
    raw = bytearray(pack_padding(200, 5, 1))
    raw[36:40] = (MAX_PAD_STORED + 1).to_bytes(4, "little")  # stored
    with pytest.raises(BadRecord):
        unpack_record_header(bytes(raw))


def test_large_records_end_aligned_small_ones_are_not_padded_and_all_read_back(tmp_path):
    pool = make_pool(tmp_path)
    store = open_aligned(pool)
    vid = store.create_volume("v", 16 * MiB).id
    rng = random.Random(3)
    model = bytearray(16 * MiB)
    locs = []
    for i, size in enumerate([300_000, 4096, ALIGN_FROM, 1 * MiB + 5, 512, 200_000, ALIGN_FROM - 1]):
        off = i * 2 * MiB + rng.randrange(4096)
        data = rng.randbytes(size)
        store.write(vid, off, data)
        model[off : off + size] = data
        ((_s, _e, loc),) = store.state.maps[vid].lookup(off, off + 1)
        header, _ = store.journal.read_header(loc_segno(loc), loc_pos(loc))
        end = loc_pos(loc) + header.total_size
        locs.append((header.total_size, end, store.journal.tail()[1]))
    store.sync()
    for total, end, tail in locs:
        if total >= ALIGN_FROM:
            assert tail % ALIGN == 0 and tail - end == padding_after(end, ALIGN), (total, end, tail)
        else:
            assert tail == end  # a small record is not padded
    assert bytes(store.read(vid, 0, len(model))) == model
    store.close(checkpoint=False)

    store = open_aligned(pool)  # replays through the padding
    try:
        assert store.recovery["torn_tail"] is None and not store.recovery["damage"]
        assert store.recovery["records"] >= 8  # the volume's creation and the 7 writes, no padding
        assert bytes(store.read(vid, 0, len(model))) == model
    finally:
        store.close(checkpoint=False)
    probe = Store(pool, load_superblock(pool), None)
    try:
        rep = check_pool(probe)
        assert rep.clean, rep.problems
    finally:
        probe.journal.close()


def test_a_local_pool_is_never_padded(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    try:
        vid = store.create_volume("v", 4 * MiB).id
        store.write(vid, 0, os.urandom(300_000))
        ((_s, _e, loc),) = store.state.maps[vid].lookup(0, 1)
        header, _ = store.journal.read_header(loc_segno(loc), loc_pos(loc))
        assert store.journal.tail()[1] == loc_pos(loc) + header.total_size
    finally:
        store.close()


def _padded_record(pool: str) -> tuple[int, int, int, bytes]:
    """A pool whose journal ends with a large record and its padding: (segno, padding start,
    padding size, the record's data)."""
    store = open_aligned(pool)
    vid = store.create_volume("v", 4 * MiB).id
    data = os.urandom(300_000)
    store.write(vid, 0, data)
    store.sync()
    ((_s, _e, loc),) = store.state.maps[vid].lookup(0, 1)
    header, _ = store.journal.read_header(loc_segno(loc), loc_pos(loc))
    segno, pad_at = loc_segno(loc), loc_pos(loc) + header.total_size
    pad = store.journal.tail()[1] - pad_at
    store.close(checkpoint=False)
    assert pad >= RECORD_HEADER_SIZE and seg_size(pool, segno) == pad_at + pad
    return segno, pad_at, pad, data


def test_padding_cut_by_a_crash_is_a_torn_tail_and_the_record_before_it_survives(tmp_path):
    pool = make_pool(tmp_path)
    segno, pad_at, pad, data = _padded_record(pool)
    seg_cut(pool, segno, pad_at + pad // 2)
    store = open_aligned(pool)
    try:
        torn = store.recovery["torn_tail"]
        assert torn is not None and (torn["segment"], torn["offset"]) == (segno, pad_at)
        assert seg_size(pool, segno) == pad_at
        assert bytes(store.read(1, 0, len(data))) == data
    finally:
        store.close(checkpoint=False)


def test_padding_that_holds_data_is_damage_not_skipped(tmp_path):
    pool = make_pool(tmp_path)
    segno, pad_at, pad, data = _padded_record(pool)
    seg_write(pool, segno, pad_at + RECORD_HEADER_SIZE + 7, b"\x01")
    # The newest segment's tail with nothing durable after it: a torn tail, cut and reported.
    store = open_aligned(pool)
    try:
        assert store.recovery["torn_tail"]["offset"] == pad_at
        assert "padding record holds data" in store.recovery["torn_tail"]["reason"]
        assert bytes(store.read(1, 0, len(data))) == data
    finally:
        store.close(checkpoint=False)

    # Inside data a commit marker says was durable: damage, which pool check reports.
    pool = make_pool(tmp_path / "second")
    segno, pad_at, pad, data = _padded_record(pool)
    store = open_aligned(pool)
    store.write(1, MiB, os.urandom(4096))
    store.sync()
    store.write(1, 2 * MiB, os.urandom(4096))  # its record carries a commit marker covering the padding
    store.sync()
    store.close(checkpoint=False)
    seg_write(pool, segno, pad_at + RECORD_HEADER_SIZE + 7, b"\x01")
    probe = Store(pool, load_superblock(pool), None, backend=AlignedLocal(pool))
    try:
        rep = check_pool(probe)
    finally:
        probe.journal.close()
    assert any("padding record holds data" in p for p in rep.problems), rep.problems


def test_replication_reads_pass_the_padding_after_the_last_record(tmp_path):
    pool = make_pool(tmp_path)
    store = open_aligned(pool)
    try:
        vid = store.create_volume("v", 4 * MiB).id
        store.write(vid, 0, os.urandom(300_000))
        store.sync()
        entries, position = read_group(store, (store.journal.current_segno, SEGMENT_HEADER_SIZE), 0)
        assert [e.kind for e in entries] == ["write"]
        assert position == store.journal.tail() == store.journal.durable_position()
        assert position[1] % ALIGN == 0
        again, still = read_group(store, position, 0)
        assert again == [] and still == position
    finally:
        store.close(checkpoint=False)


def test_a_torn_tail_inside_a_padded_write_of_the_journal_file(tmp_path):
    """A crash that leaves only the padding's header: the record before it is intact."""
    pool = make_pool(tmp_path)
    segno, pad_at, pad, data = _padded_record(pool)
    seg_cut(pool, segno, pad_at)
    seg_append(pool, segno, seg_read_header(pad, segno))
    store = open_aligned(pool)
    try:
        assert store.recovery["torn_tail"]["offset"] == pad_at
        assert bytes(store.read(1, 0, len(data))) == data
    finally:
        store.close(checkpoint=False)


def seg_read_header(pad: int, segno: int) -> bytes:
    return pack_padding(pad, 1, segno)[:RECORD_HEADER_SIZE]



@pytest.mark.parametrize("aligned", [False, True])
def test_a_consumer_never_gets_a_position_past_the_durable_end(tmp_path, aligned):
    """A record written after a sync carries a commit marker in front of it, in the same write:
    while that write is not durable, a reader that stops before it must not be handed the
    record's location (past the marker) as its position, or a crash that cuts the marker would
    leave the position beyond the journal's end."""
    pool = make_pool(tmp_path)
    store = open_aligned(pool) if aligned else Store.open(pool)
    try:
        vid = store.create_volume("v", 4 * MiB).id
        store.write(vid, 0, os.urandom(300_000))
        store.sync()
        store.write(vid, MiB, os.urandom(4096))  # not durable; a marker goes in front of it
        durable = store.journal.durable_position()
        assert store.journal.tail() > durable
        store.consumers.register("r", (store.journal.current_segno, SEGMENT_HEADER_SIZE))
        entries = list(read_records(store, "r"))
        assert entries and entries[-1].next_position == durable
        _got, position = read_group(store, (store.journal.current_segno, SEGMENT_HEADER_SIZE), 0)
        assert position == durable
    finally:
        store.close(checkpoint=False)
