"""Store.read(nowait=True), what the NBD server serves in place (issue 28): data the header
cache and the page cache hold comes back at once; a page-cache miss starts the disk read and
raises WouldBlock(started=True), and a retry finds it; a remote pool never waits in such a
read (WouldBlock(started=False)); nothing that fails its checksum is ever returned, and a
read that would block is counted once, by the read that serves it."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from poolkit import evict_segments, frame_on_disk, make_pool, seg_flip, seg_path
from poolsite import active

from vstor.errors import CorruptData, WouldBlock
from vstor.store.journal.format import FRAME_SIZE, loc_pos, loc_segno
from vstor.store.store import Store

pytestmark = pytest.mark.usefixtures("pool_backend")

MiB = 1 << 20
RETRY_LIMIT = 5.0  # seconds for the kernel to read what a miss asked for (milliseconds here)


def _written(tmp_path) -> tuple[str, Store, int, bytes]:
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 8 * MiB).id
    data = os.urandom(4 * MiB)
    store.write(vid, 0, data)
    store.sync()
    return pool, store, vid, data


def _cached(pool: str, segno: int) -> int:
    """Bytes of a segment file in the page cache, by fincore (util-linux: mincore, which
    unlike a probing read never starts a read itself)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", seg_path(pool, segno)],
                         capture_output=True, text=True, check=True).stdout
    return int(out)


@pytest.mark.local_only("a RADOS pool has no page cache of its segments: its nowait reads always block")
def test_what_memory_holds_is_read_at_once_and_counted_once(tmp_path) -> None:
    _pool, store, vid, data = _written(tmp_path)
    try:
        reads = store.stats.reads
        for off, n in ((0, 4096), (FRAME_SIZE - 100, 300), (3 * MiB + 12345, 70_000), (0, 4 * MiB)):
            assert bytes(store.read(vid, off, n, nowait=True)) == data[off : off + n]
        assert bytes(store.read(vid, 5 * MiB, 8192, nowait=True)) == bytes(8192)  # a hole: no I/O at all
        assert store.stats.reads == reads + 5
    finally:
        store.close()


@pytest.mark.local_only("the page cache of a local segment file")
def test_a_miss_starts_the_read_and_a_retry_finds_it(tmp_path) -> None:
    pool, store, vid, data = _written(tmp_path)
    store.close()
    store = Store.open(pool)  # an empty header cache: the first miss is the record's header
    try:
        evict_segments(pool)
        (segno,) = {loc_segno(loc) for _s, _e, loc in store.state.maps[vid].lookup(0, 4 * MiB)}
        before = _cached(pool, segno)  # the live segment's mapped tail stays cached
        assert before < 1 * MiB
        reads, misses, deadline = store.stats.reads, 0, time.monotonic() + RETRY_LIMIT
        while True:
            try:
                got = store.read(vid, 2 * MiB + 4096, 4096, nowait=True)
                break
            except WouldBlock as e:
                assert e.started, "a local pool's miss must start the read"
                misses += 1
                assert time.monotonic() < deadline, "the kernel never read what the miss asked for"
                time.sleep(0.001)
        assert bytes(got) == data[2 * MiB + 4096 : 2 * MiB + 8192]
        assert misses >= 1 and store.stats.reads == reads + 1  # the misses are not counted as reads
        # only what the read needs was fetched: the record's header and one frame, not the segment
        assert 0 < _cached(pool, segno) - before <= 4 * FRAME_SIZE
    finally:
        store.close()


def test_a_remote_pool_never_waits_and_the_blocking_read_serves(tmp_path) -> None:
    _pool, store, vid, data = _written(tmp_path)
    try:
        if active() is None:
            assert bytes(store.read(vid, 4096, 4096, nowait=True)) == data[4096:8192]
        else:
            with pytest.raises(WouldBlock) as e:
                store.read(vid, 4096, 4096, nowait=True)
            assert not e.value.started
            assert bytes(store.read(vid, 4096, 4096)) == data[4096:8192]
    finally:
        store.close()


@pytest.mark.local_only("the damaged frame is then in the page cache, where a nowait read finds it")
def test_a_nowait_read_never_returns_a_block_or_frame_that_fails_its_checksum(tmp_path) -> None:
    pool, store, vid, data = _written(tmp_path)
    try:
        segno, at = frame_on_disk(store, vid, 1)
        seg_flip(pool, segno, at + 30_000)  # frame 1, its block 7
        errors = store.stats.read_errors
        for _ in range(2):
            with pytest.raises(CorruptData, match="block 23"):  # block 7 of frame 1: its block sum
                store.read(vid, FRAME_SIZE + 28672, 4096, nowait=True)
            with pytest.raises(CorruptData, match="frame 1"):  # the whole frame: its frame checksum
                store.read(vid, FRAME_SIZE, FRAME_SIZE, nowait=True)
        assert store.stats.read_errors == errors + 4
        assert bytes(store.read(vid, 4096, 4096, nowait=True)) == data[4096:8192]  # frame 0 is sound
        other = FRAME_SIZE + 4096  # another block of the damaged frame: verified by its own sum
        assert bytes(store.read(vid, other, 4096, nowait=True)) == data[other : other + 4096]
    finally:
        store.close()


@pytest.mark.local_only("the page cache of a local segment file")
def test_a_scattered_read_names_its_range_for_defragmentation_once_however_often_it_would_block(tmp_path) -> None:
    pool, store, vid, data = _written(tmp_path)
    for k in range(8):  # eight overwrites cut the first 64 KiB into 16 pieces
        store.write(vid, k * 8192, b"%d" % k * 4096)
    store.sync()
    store.close()
    store = Store.open(pool)
    hints: list[tuple[int, int, int, int]] = []
    store.defrag_hint = lambda *hint: hints.append(hint)
    try:
        evict_segments(pool)
        deadline, misses = time.monotonic() + RETRY_LIMIT, 0
        while True:
            try:
                store.read(vid, 0, 65536, nowait=True)
                break
            except WouldBlock:
                misses += 1
                assert time.monotonic() < deadline
                time.sleep(0.001)
        assert misses >= 1 and hints == [(vid, 0, 65536, 16)]
    finally:
        store.close()


@pytest.mark.local_only("the page cache of a local segment file")
def test_the_last_record_of_a_file_is_read_at_once_from_the_page_cache(tmp_path) -> None:
    """A header read asks for more bytes than a small record at the end of its file has after
    it: a short read there is the file's end, not a page-cache miss."""
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", MiB).id
    data = os.urandom(1000)  # a record of 1,096 bytes: less than a header read
    store.write(vid, 8192, data)
    store.sync()
    ((_s, _e, loc),) = store.state.maps[vid].lookup(8192, 8193)
    store.close()
    store = Store.open(pool)  # no header cached
    try:
        path = seg_path(pool, loc_segno(loc))
        assert os.path.getsize(path) - loc_pos(loc) < 64 + 64 * 32, "the record is not near the file's end"
        with open(path, "rb") as f:
            f.read()  # all of it in the page cache
        assert bytes(store.read(vid, 8192, 1000, nowait=True)) == data
    finally:
        store.close()
