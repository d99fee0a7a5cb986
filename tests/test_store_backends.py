"""The Store on each backend: the same data path, replay, segment rollover and deletion,
and pool check, whether the segments, superblock and checkpoints are local files or RADOS
objects (tests/cephlab.py's cluster; ``make test-rados``)."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cephlab import CLIENT_TIMEOUT, CephLab
from poolkit import SEG, MiB, make_pool

from vstor.store.backend.base import PoolBackend
from vstor.store.backend.local import LocalBackend
from vstor.store.backend.location import open_backend
from vstor.store.check import check_pool
from vstor.store.store import Store
from vstor.store.superblock import DEFAULT_CHUNK, Superblock, format_backend, load_superblock_from

BACKENDS = ["local", pytest.param("rados", marks=pytest.mark.rados)]


@pytest.fixture(params=BACKENDS)
def pool(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Callable[[], PoolBackend | None]]]:
    """(pool directory, a function opening its backend). A RADOS pool keeps its segments,
    superblock and checkpoints in RADOS; its directory holds only what is not routed yet."""
    if request.param == "local":
        yield make_pool(tmp_path, compress="lz4"), lambda: None
        return
    lab: CephLab = request.getfixturevalue("ceph_lab")
    location = request.getfixturevalue("rados_location")

    def backend() -> PoolBackend:
        return open_backend(location, ceph_conf=str(lab.conf), timeout=CLIENT_TIMEOUT)

    be = backend()
    try:
        format_backend(be, Superblock(str(uuid.uuid4()), DEFAULT_CHUNK, SEG, "lz4", False, "", "", time.time()))
    finally:
        be.close()
    directory = tmp_path / "pool"
    (directory / "meta").mkdir(parents=True)
    yield str(directory), backend


def payload(rng: random.Random, n: int) -> bytes:
    """Half random, half compressible."""
    return rng.randbytes(n // 2) + bytes([rng.randrange(256)]) * (n - n // 2)


def test_write_rollover_replay_and_checkpoint(pool: tuple[str, Callable[[], PoolBackend | None]]) -> None:
    directory, backend = pool
    rng = random.Random(29)
    store = Store.open(directory, backend=backend())
    vol = store.create_volume("v", 64 * MiB)
    image = bytearray(64 * MiB)
    for _ in range(60):  # about 45 MiB of records: rollovers past two 16 MiB segments
        off, n = rng.randrange(0, 62 * MiB), rng.choice((4096, 65536, 1 * MiB, 1536 * 1024 + 5))
        data = payload(rng, n)
        store.write(vol.id, off, data)
        image[off:off + n] = data
    store.sync()
    assert len(store.journal.segments()) >= 3
    assert store.read(vol.id, 0, 64 * MiB) == image
    store.close(checkpoint=False)  # replay every record from the initial checkpoint

    store = Store.open(directory, backend=backend())
    try:
        assert store.recovery["records"] > 0, store.recovery
        assert store.read(vol.id, 0, 64 * MiB) == image
        for _ in range(40):  # overwrite one region: older segments die
            data = payload(rng, 1 * MiB)
            store.write(vol.id, 0, data)
            image[0:MiB] = data
        store.sync()
        before = store.journal.segments()
        store.checkpoint()
        store.checkpoint()  # the older copy moves past them too: dead segments are deleted
        after = store.journal.segments()
        gone = set(before) - set(after)
        assert gone, (before, after)
        assert all(store.journal.backend.segment_size(s) == 0 for s in gone)
        assert store.read(vol.id, 0, 64 * MiB) == image
    finally:
        store.close()

    be = backend() or LocalBackend(directory)
    probe = Store(directory, load_superblock_from(be), None, backend=be)
    try:
        rep = check_pool(probe)
        assert rep.clean, rep.problems
        assert rep.records > 0
    finally:
        probe.close(checkpoint=False)
    store = Store.open(directory, backend=backend())
    try:
        assert store.read(vol.id, 0, 64 * MiB) == image
    finally:
        store.close()


def test_a_torn_tail_is_cut_and_acknowledged_writes_stay(pool: tuple[str, Callable[[], PoolBackend | None]]) -> None:
    """Records written after the last sync, then a tail torn mid-record: replay keeps every
    synced write and cuts the torn record, on either backend."""
    directory, backend = pool
    store = Store.open(directory, backend=backend())
    vol = store.create_volume("v", 8 * MiB)
    store.write(vol.id, 0, b"A" * MiB)
    store.sync()
    segno, tail = store.journal.tail()
    store.write(vol.id, MiB, b"B" * MiB)
    store.sync()
    store.close(checkpoint=False)
    be = backend() or LocalBackend(directory)
    try:  # tear the last record: cut the segment in the middle of it
        be.truncate_segment(segno, tail + 1000)
    finally:
        be.close()
    store = Store.open(directory, backend=backend())
    try:
        assert store.read(vol.id, 0, MiB) == b"A" * MiB
        assert store.read(vol.id, MiB, MiB) == bytes(MiB)  # the torn record is gone, not garbage
        assert store.recovery["torn_tail"], store.recovery
    finally:
        store.close()


def test_the_store_keeps_nothing_of_a_writers_buffer(pool: tuple[str, Callable[[], PoolBackend | None]]) -> None:
    """Store.write may be handed a view of a buffer its caller reuses at once (libfuse's, through
    VolumeFS.write_from): whatever the journal holds back (on RADOS, small appends coalesced until
    the next flush) must be its own copy. Writes of several sizes, the buffer overwritten after
    each, one sync at the end."""
    directory, backend = pool
    store = Store.open(directory, backend=backend())
    try:
        vid = store.create_volume("v", 8 * MiB).id
        buf = bytearray(MiB)
        sizes = (4096, 4096, 64 * 1024, MiB)
        for n, size in enumerate(sizes):
            buf[:size] = bytes([n + 1]) * size
            store.write(vid, n * MiB, memoryview(buf)[:size])
            buf[:] = b"\xee" * MiB
        store.sync()
        for n, size in enumerate(sizes):
            assert store.read(vid, n * MiB, size) == bytes([n + 1]) * size
    finally:
        store.close()
