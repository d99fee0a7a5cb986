"""The header cache: raw entries from the write path, built on first read, within the budget,
and an eviction that a scan larger than the cache does not defeat."""

from __future__ import annotations

import random
from array import array

import pytest

from vstor.store.journal.format import (
    FF_LZ4,
    FRAME_ENTRY,
    FRAME_SIZE,
    REC_WRITE,
    RECORD_HEADER_SIZE,
    RecordHeader,
    frame_count,
    make_loc,
    pack_record_header,
    trusted_record_header,
)
from vstor.store.journal.hcache import ENTRY_OVERHEAD, PACKED_OVERHEAD, CachedRecord, HeaderCache
from vstor.store.journal.segread import HEADER_READ


def _record(lengths: list[int], flags: int = 0, logical: int | None = None) -> tuple[RecordHeader, bytes]:
    table = b"".join(FRAME_ENTRY.pack(n, flags, 0, 1000 + i, bytes(12)) for i, n in enumerate(lengths))
    length = sum(lengths) if logical is None else logical
    header = RecordHeader(REC_WRITE, len(lengths), 0, 1, 7, 0, length, len(table) + sum(lengths), 1)
    return header, table


def _packed(header: RecordHeader, table: bytes) -> bytes:
    return pack_record_header(header, table, 3) + table


def test_one_frame_record_stored_as_is_keeps_its_checksum():
    rec = CachedRecord.build(*_record([4096]))
    assert rec.offs == array("I", [0, 4096])
    assert rec.raw_csums == array("Q", [1000])
    assert rec.entry(0).stored_len == 4096 and rec.entry(0).csum == 1000


def test_one_compressed_frame_has_no_raw_checksums():
    rec = CachedRecord.build(*_record([900], flags=FF_LZ4, logical=4096))
    assert rec.offs == array("I", [0, 900])
    assert rec.raw_csums is None
    assert CachedRecord.build(*_record([900], logical=4096)).raw_csums is None  # short, unflagged: not as is


def test_several_frames_give_offsets_and_checksums():
    rec = CachedRecord.build(*_record([FRAME_SIZE, FRAME_SIZE, 100]))
    assert list(rec.offs) == [0, FRAME_SIZE, 2 * FRAME_SIZE, 2 * FRAME_SIZE + 100]
    assert list(rec.raw_csums or ()) == [1000, 1001, 1002]
    short = CachedRecord.build(*_record([FRAME_SIZE, 50], logical=2 * FRAME_SIZE))  # a short frame: not as is
    assert short.raw_csums is None
    inner = CachedRecord.build(*_record([FRAME_SIZE, 50, FRAME_SIZE], logical=3 * FRAME_SIZE))
    assert inner.raw_csums is None and list(inner.offs) == [0, FRAME_SIZE, FRAME_SIZE + 50, 2 * FRAME_SIZE + 50]
    flagged = CachedRecord.build(*_record([FRAME_SIZE, FRAME_SIZE], flags=FF_LZ4))
    assert flagged.raw_csums is None


def test_a_record_without_frames():
    header = RecordHeader(REC_WRITE, 0, 0, 1, 7, 0, 0, 0, 1)
    rec = CachedRecord.build(header, b"")
    assert list(rec.offs) == [0] and rec.raw_csums is not None and not rec.raw_csums


def test_one_header_read_covers_the_table_of_a_1_mib_record_with_block_sums():
    """A header-cache miss on a record written by a 1 MiB request (FUSE's largest) is one read."""
    header = RecordHeader(REC_WRITE, frame_count(1 << 20), 0, 1, 7, 0, 1 << 20, 0, 1, sums=True)
    assert RECORD_HEADER_SIZE + header.table_size <= HEADER_READ


def _same(a: CachedRecord, b: CachedRecord) -> bool:
    """Equal records; offsets and checksums as lists (tuples or arrays)."""
    return (a.header, a.table, list(a.offs), a.raw_csums is None) == (b.header, b.table, list(b.offs),
                                                                      b.raw_csums is None) and (
        a.raw_csums is None or list(a.raw_csums) == list(b.raw_csums or ()))


@pytest.mark.parametrize("lengths,flags,logical", [
    ([4096], 0, None), ([900], FF_LZ4, 4096), ([900], 0, 4096), ([FRAME_SIZE, FRAME_SIZE, 100], 0, None),
    ([FRAME_SIZE, 50], 0, 2 * FRAME_SIZE), ([], 0, None)])
def test_a_packed_entry_builds_the_record_a_read_of_its_header_builds(lengths, flags, logical):
    header, table = _record(lengths, flags, logical)
    assert _same(CachedRecord.from_packed(_packed(header, table)), CachedRecord.build(header, table))


def test_a_record_of_one_frame_stays_packed_and_larger_ones_are_built_once():
    """A one-frame record (an aged volume's small writes) is built again on each get, so that the
    cache keeps three times as many; a larger one is built on the first get and kept built."""
    cache = HeaderCache()
    header, table = _record([4096])
    loc = make_loc(3, 64)
    cache.put_raw(loc, _packed(header, table))
    packed_cost = PACKED_OVERHEAD + RECORD_HEADER_SIZE + len(table)
    assert cache.used == packed_cost
    first = cache.get(loc)
    assert first is not None and _same(first, CachedRecord.build(header, table))
    assert cache.get(loc) is not first and cache.used == packed_cost
    big_header, big_table = _record([FRAME_SIZE] * 16)
    big = make_loc(3, 8192)
    cache.put_raw(big, _packed(big_header, big_table))
    built = cache.get(big)
    assert built is not None and _same(built, CachedRecord.build(big_header, big_table))
    assert cache.get(big) is built  # replaced in the cache, not rebuilt
    assert cache.used == packed_cost + built.cost()
    assert cache.get(make_loc(3, 9999)) is None


@pytest.mark.parametrize("segno", [2, None])  # None: version 1, as pools before 2026-12-05 hold
def test_a_header_read_on_a_miss_is_kept_packed_when_it_has_one_frame(segno):
    """A miss keeps the bytes it read as they are (not packed again), whatever their version."""
    cache = HeaderCache()
    header, table = _record([4096])
    as_read = pack_record_header(header, table, segno) + table
    small = cache.put_read(make_loc(2, 64), as_read)
    assert _same(small, CachedRecord.build(header, table))
    assert cache.used == PACKED_OVERHEAD + RECORD_HEADER_SIZE + len(table)
    assert cache._d[make_loc(2, 64)] is as_read
    got = cache.get(make_loc(2, 64))
    assert got is not None and _same(got, small)
    big_header, big_table = _record([FRAME_SIZE] * 4)
    big = cache.put_read(make_loc(2, 8192), pack_record_header(big_header, big_table, segno) + big_table)
    assert cache.get(make_loc(2, 8192)) is big
    assert cache.used == PACKED_OVERHEAD + RECORD_HEADER_SIZE + len(table) + big.cost()


@pytest.mark.parametrize("sums", [False, True])
def test_a_packed_header_reads_back_as_it_was_written(sums: bool):
    header = RecordHeader(REC_WRITE, 1, 2, 3, 1 << 40, 5 << 30, 4096, 4096 + 32 + 8 * sums, 1 << 62, sums)
    assert trusted_record_header(_packed(header, bytes(32 + 8 * sums))) == header


def test_costs_are_the_memory_the_entries_take():
    """The budget is the cache's memory: packed and built one-frame entries, and built 1 MiB
    ones with block sums, cost within a fifth of what tracemalloc finds they hold."""
    import tracemalloc

    rng = random.Random(1)
    kinds = {"packed": 0, "built": 0, "built-1MiB": 0}
    for kind in kinds:
        cache = HeaderCache(budget=1 << 40)
        n = 200 if kind == "built-1MiB" else 5000
        records = []
        tracemalloc.start()
        for i in range(n):  # distinct integers, as real headers have
            lengths = [FRAME_SIZE] * 16 if kind == "built-1MiB" else [4096]
            table = b"".join(FRAME_ENTRY.pack(k, 0, 0, rng.getrandbits(64), bytes(12)) for k in lengths)
            if kind == "built-1MiB":
                table += bytes(8 * 256)
            length = sum(lengths)
            header = RecordHeader(REC_WRITE, len(lengths), 1, 1, 10**6 + i, rng.randrange(1 << 40), length,
                                  len(table) + length, 1 << 60 | i, kind == "built-1MiB")
            records.append((make_loc(1, 64 + i * 5000), _packed(header, table)))
        for loc, packed in records:
            cache.put_raw(loc, packed)
            if kind == "built":  # what a read's miss puts
                cache.put(loc, CachedRecord.build(trusted_record_header(packed), packed[RECORD_HEADER_SIZE:]))
            elif kind == "built-1MiB":
                cache.get(loc)
        records.clear()  # the cache holds the only references now: the headers' objects are gone
        real = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert 0.8 < cache.used / real < 1.25, (kind, cache.used / n, real / n)


def test_budget_is_kept_with_raw_and_built_entries():
    header, table = _record([4096])
    cache = HeaderCache(budget=100 * (ENTRY_OVERHEAD + 100))
    for i in range(1000):
        loc = make_loc(1, 64 + i * 5000)
        cache.put_raw(loc, _packed(header, table))
        if i % 3 == 0:
            cache.get(loc)
        assert cache.used <= cache.budget
    assert 50 < len(cache) <= cache.budget // (PACKED_OVERHEAD + RECORD_HEADER_SIZE + len(table))
    assert cache.get(make_loc(1, 64 + 999 * 5000)) is not None  # the entry just inserted stays


def test_every_entry_leaves_in_time_not_only_the_newest():
    """Evictions take a quarter from a random place, wrapping around: the oldest entries go too
    (a run that could not wrap almost never reached the first ones)."""
    header, table = _record([4096])
    cache = HeaderCache(budget=100 * (ENTRY_OVERHEAD + len(table)), rng=random.Random(5))
    for i in range(3000):  # about 40 evictions: each drops a given entry with chance 1/4
        cache.put_raw(make_loc(1, 64 + i * 5000), _packed(header, table))
    assert not any(cache.get(make_loc(1, 64 + i * 5000)) for i in range(200))


@pytest.mark.parametrize("seed", range(3))
def test_a_scan_larger_than_the_cache_still_hits(seed: int):
    """Records read back in the order they were written, 1.3 times as many as the cache
    holds (a sequential read of an aged volume): evicting the oldest quarter missed on every
    one, since it dropped those wanted next; a random quarter keeps a third of them."""
    header, table = _record([4096])
    cache = HeaderCache(budget=1000 * CachedRecord.build(header, table).cost(), rng=random.Random(seed))
    locs = [make_loc(1 + i // 500, 64 + (i % 500) * 4192) for i in range(1300)]
    hits = 0
    for _ in range(4):
        for loc in locs:
            if cache.get(loc) is None:
                cache.put(loc, CachedRecord.build(header, table))
            else:
                hits += 1
    assert hits / (4 * len(locs)) > 0.25


def test_dropping_segments_returns_their_cost():
    header, table = _record([4096])
    cache = HeaderCache()
    for seg in (1, 2):
        cache.put_raw(make_loc(seg, 64), _packed(header, table))
    cache.get(make_loc(1, 64))
    cache.drop_segments({1})
    assert len(cache) == 1 and cache.used == PACKED_OVERHEAD + RECORD_HEADER_SIZE + len(table)
    cache.drop_segments({2})
    assert len(cache) == 0 and cache.used == 0
