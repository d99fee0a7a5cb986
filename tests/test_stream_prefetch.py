"""Read-ahead of an aged volume's small records (Store.prefetch, vstor/store/reads/ahead.py):
which records a prefetch asks the kernel for, and that a backup job's sequential reads ask
for what follows them. Residency is read with mincore (fincore, or a mapping never touched),
which unlike a probing read never starts a read itself."""

from __future__ import annotations

import os
import random
import time

import pytest
from poolkit import MiB, cached_bytes, evict_segments, make_pool, resident, seg_path
from poolsite import active

from vstor.backup.jobs import READ_AHEAD, Image
from vstor.store.journal.format import RECORD_HEADER_SIZE, loc_pos, loc_segno
from vstor.store.store import Store

pytestmark = pytest.mark.usefixtures("pool_backend")  # each test on a local and a RADOS pool (tests/poolsite.py)

SMALL = 32  # 4 KiB overwrites in each of two ranges
WAIT = 10.0  # seconds for the kernel to read what a WILLNEED asked for (milliseconds here)


def _aged(tmp_path) -> tuple[str, Store, int, bytearray, list[int], list[int]]:
    """A pool with a 32 MiB volume written in 1 MiB records, then overwritten by 4 KiB records
    at SMALL distinct blocks of [2, 2.5) MiB and SMALL of [20, 20.5) MiB, taken in turns so
    that the journal holds them interleaved; its pages evicted. (pool, store, volume, model,
    the offsets near 2 MiB, those near 20 MiB)."""
    pool = make_pool(tmp_path)
    st = Store.open(pool)
    vid = st.create_volume("v", 32 * MiB).id
    model = bytearray(os.urandom(32 * MiB))
    for off in range(0, 32 * MiB, MiB):
        st.write(vid, off, model[off : off + MiB])
    rng = random.Random(7)
    near = [2 * MiB + b * 4096 for b in rng.sample(range(128), SMALL)]
    far = [20 * MiB + b * 4096 for b in rng.sample(range(128), SMALL)]
    for a, b in zip(near, far, strict=True):
        for off in (a, b):
            block = os.urandom(4096)
            st.write(vid, off, block)
            model[off : off + 4096] = block
    other = st.create_volume("w", 8 * MiB).id
    st.write(other, 0, os.urandom(6 * MiB))  # the live segment's mapped tail lies past the records
    st.close()
    st = Store.open(pool)
    assert bytes(st.read(vid, 0, 32 * MiB)) == model  # every header cached, as on a volume in use
    evict_segments(pool)
    assert cached_bytes(pool) < 64 << 10
    return pool, st, vid, model, near, far


def _until(pool: str, least: int) -> int:
    """Wait until the pool's segments have at least ``least`` bytes cached; returns how many."""
    deadline = time.monotonic() + WAIT
    while (n := cached_bytes(pool)) < least:
        assert time.monotonic() < deadline, f"{n} bytes cached; the range asked for never came in"
        time.sleep(0.01)
    return n


@pytest.mark.local_only("the page cache of local segment files")
def test_prefetch_asks_for_a_ranges_small_records_and_its_large_ones_only_when_told(tmp_path) -> None:
    pool, st, vid, model, _near, _far = _aged(tmp_path)
    try:
        st.prefetch(vid, 2 * MiB, 2 * MiB, large=False)
        _until(pool, SMALL * 4096)
        time.sleep(0.2)  # anything else asked for would be in by now
        n = cached_bytes(pool)
        # Each record is one or two pages (its header, table and data); the other range's
        # records lie between them in the journal, and no 1 MiB record was asked for.
        assert SMALL * 4096 <= n <= 2 * SMALL * 8192, n
        st.prefetch(vid, 2 * MiB, 2 * MiB)  # large: [2.5, 4) MiB of the 1 MiB records too
        _until(pool, n + MiB + MiB // 2)
        assert bytes(st.read(vid, 2 * MiB, 2 * MiB)) == model[2 * MiB : 4 * MiB]
        st.prefetch(vid, 64 * MiB, MiB, large=False)  # past the end: nothing to ask for
        st.prefetch(999, 0, MiB, large=False)  # no such volume: a hint, ignored
    finally:
        st.close()


def _record(st: Store, vid: int, off: int) -> tuple[str, int]:
    """(segment file, position) of the 4 KiB record holding ``off``."""
    ((_s, _e, loc),) = st.state.maps[vid].lookup(off, off + 4096)
    return seg_path(st.pool, loc_segno(loc)), loc_pos(loc)


@pytest.mark.local_only("the page cache of local segment files")
def test_a_backup_images_sequential_reads_ask_for_the_small_records_after_them(tmp_path) -> None:
    _pool, st, vid, model, near, far = _aged(tmp_path)
    try:
        near_records = [_record(st, vid, off) for off in near]
        far_records = [_record(st, vid, off) for off in far]
        assert READ_AHEAD < 18 * MiB  # 20 MiB lies beyond what the reads of [0, 2) MiB ask for
        read: list[int] = []
        image = Image(st, vid, 0, 32 * MiB, read.append)
        assert bytes(image.read(0, MiB)) == model[:MiB]
        time.sleep(0.2)
        assert not any(resident(p, pos, 4096) for p, pos in near_records)  # one read is no stream
        assert bytes(image.read(MiB, MiB)) == model[MiB : 2 * MiB]  # continues it: [2, 2 + READ_AHEAD)
        deadline = time.monotonic() + WAIT
        while not all(resident(p, pos, RECORD_HEADER_SIZE + 4096) for p, pos in near_records):
            assert time.monotonic() < deadline, "the small records after the stream were never read in"
            time.sleep(0.01)
        assert not all(resident(p, pos, RECORD_HEADER_SIZE + 4096) for p, pos in far_records)  # not asked for
        assert read == [MiB, MiB]
        assert bytes(image.read(2 * MiB, 2 * MiB)) == model[2 * MiB : 4 * MiB]
    finally:
        st.close()


def test_prefetch_reads_headers_for_large_records_on_a_local_pool_only(tmp_path) -> None:
    """A remote pool has no page cache to warm: a prefetch there must not read a header (a
    round trip to the cluster) to work out ranges it then cannot ask for."""
    pool = make_pool(tmp_path)
    st = Store.open(pool)
    try:
        vid = st.create_volume("v", 4 * MiB).id
        st.write(vid, 0, os.urandom(2 * MiB))
        st.sync()
    finally:
        st.close()
    st = Store.open(pool)  # an empty header cache
    try:
        ((_s, _e, loc), *_rest) = st.state.maps[vid].lookup(0, MiB)
        assert st._hcache.peek(loc) is None
        st.prefetch(vid, 0, 2 * MiB)
        assert (st._hcache.peek(loc) is not None) == (active() is None)
    finally:
        st.close()
