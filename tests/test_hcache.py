"""The header cache: raw entries from the write path, built on first read, within the budget."""

from __future__ import annotations

from array import array

from vstor.store.journal.format import (
    FF_LZ4,
    FRAME_ENTRY,
    FRAME_SIZE,
    REC_WRITE,
    RecordHeader,
    make_loc,
)
from vstor.store.journal.hcache import ENTRY_OVERHEAD, CachedRecord, HeaderCache


def _record(lengths: list[int], flags: int = 0, logical: int | None = None) -> tuple[RecordHeader, bytes]:
    table = b"".join(FRAME_ENTRY.pack(n, flags, 0, 1000 + i, bytes(12)) for i, n in enumerate(lengths))
    length = sum(lengths) if logical is None else logical
    header = RecordHeader(REC_WRITE, len(lengths), 0, 1, 7, 0, length, len(table) + sum(lengths), 1)
    return header, table


def test_one_frame_record_stored_as_is_keeps_its_checksum():
    rec = CachedRecord.build(*_record([4096]))
    assert rec.offs == array("I", [0, 4096])
    assert rec.raw_csums == array("Q", [1000])
    assert rec.entry(0).stored_len == 4096 and rec.entry(0).csum == 1000


def test_one_compressed_frame_has_no_raw_checksums():
    rec = CachedRecord.build(*_record([900], flags=FF_LZ4, logical=4096))
    assert rec.offs == array("I", [0, 900])
    assert rec.raw_csums is None


def test_several_frames_give_offsets_and_checksums():
    rec = CachedRecord.build(*_record([FRAME_SIZE, FRAME_SIZE, 100]))
    assert list(rec.offs) == [0, FRAME_SIZE, 2 * FRAME_SIZE, 2 * FRAME_SIZE + 100]
    assert list(rec.raw_csums or ()) == [1000, 1001, 1002]
    short = CachedRecord.build(*_record([FRAME_SIZE, 50], logical=2 * FRAME_SIZE))  # a short frame: not as is
    assert short.raw_csums is None


def test_a_raw_entry_is_built_once_on_first_get():
    cache = HeaderCache()
    header, table = _record([4096])
    loc = make_loc(3, 64)
    cache.put_raw(loc, header, table)
    assert cache.used == ENTRY_OVERHEAD + len(table)
    first = cache.get(loc)
    assert first == CachedRecord.build(header, table)
    assert cache.get(loc) is first  # replaced in the cache, not rebuilt
    assert cache.used == first.cost()
    assert cache.get(make_loc(3, 9999)) is None


def test_budget_is_kept_with_raw_and_built_entries():
    header, table = _record([4096])
    cache = HeaderCache(budget=100 * (ENTRY_OVERHEAD + 100))
    for i in range(1000):
        loc = make_loc(1, 64 + i * 5000)
        cache.put_raw(loc, header, table)
        if i % 3 == 0:
            cache.get(loc)
        assert cache.used <= cache.budget
    assert 50 < len(cache) <= cache.budget // (ENTRY_OVERHEAD + len(table))
    assert cache.get(make_loc(1, 64)) is None  # the oldest went first
    assert cache.get(make_loc(1, 64 + 999 * 5000)) is not None


def test_dropping_segments_returns_their_cost():
    header, table = _record([4096])
    cache = HeaderCache()
    for seg in (1, 2):
        cache.put_raw(make_loc(seg, 64), header, table)
    cache.get(make_loc(1, 64))
    cache.drop_segments({1})
    assert len(cache) == 1 and cache.used == ENTRY_OVERHEAD + len(table)
    cache.drop_segments({2})
    assert len(cache) == 0 and cache.used == 0
