"""Blobs larger than one RADOS write (rados/blob.py), with a small ``max_blob`` given to the
backend's constructor: striped content reads back whole, a replace is atomic for a reader
that read the old head, stripes of replaced, crashed or deleted generations go, and a pool
whose checkpoints are striped opens, reads back and checks clean. Needs the session's Ceph
cluster (``make test-rados``)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from cephlab import CLIENT_TIMEOUT, CephLab

from vstor.store.backend.location import parse_rados
from vstor.store.backend.rados.backend import RadosBackend, connect_cluster
from vstor.store.backend.rados.blob import HEAD_MAGIC, HEAD_SIZE, STRIPED_DIR
from vstor.store.check import check_pool
from vstor.store.maintenance.checkpoint import read_checkpoints
from vstor.store.store import Store
from vstor.store.superblock import init_backend_pool, load_superblock_from

pytestmark = pytest.mark.rados
SMALL = 4096  # max_blob for these tests: one stripe is 4 KiB


@pytest.fixture
def small_backend(ceph_lab: CephLab, rados_location: str) -> Iterator[RadosBackend]:
    loc = parse_rados(rados_location)
    be = RadosBackend(connect_cluster(str(ceph_lab.conf), None, CLIENT_TIMEOUT), loc.pool, loc.prefix,
                      owns_cluster=True, max_blob=SMALL)
    yield be
    be.close()


def stripes(be: RadosBackend, name: str = "") -> list[str]:
    return sorted(o.key for o in be.meta.list_objects() if o.key.startswith(STRIPED_DIR + name))


def test_large_blob_is_striped_and_reads_back_whole(small_backend: RadosBackend) -> None:
    be = small_backend
    big = os.urandom(5 * SMALL + 123)
    be.put("meta/checkpoint.a", big)
    assert be.get("meta/checkpoint.a") == big
    assert be.meta.stat("meta/checkpoint.a")[0] == HEAD_SIZE  # the head object only
    assert len(stripes(be)) == 6
    assert be.list_blobs("meta/") == ["meta/checkpoint.a"] and be.list_blobs("") == []  # stripes are not blobs
    small = HEAD_MAGIC + b"looks like a head"  # a small blob that starts like a head is striped too
    be.put("meta/x", small)
    assert be.get("meta/x") == small and be.meta.stat("meta/x")[0] == HEAD_SIZE
    with pytest.raises(FileExistsError):
        be.create("meta/checkpoint.a", big)
    assert len(stripes(be, "meta/checkpoint.a/")) == 6  # the failed create left none of its own
    be.create("meta/new", big)
    assert be.get("meta/new") == big


def test_replace_is_atomic_and_old_stripes_go(small_backend: RadosBackend) -> None:
    be = small_backend
    old, new = os.urandom(3 * SMALL), os.urandom(4 * SMALL + 1)
    be.put("meta/checkpoint.b", old)
    old_head = be.meta.read("meta/checkpoint.b", HEAD_SIZE, 0)
    old_stripes = stripes(be)
    be.put("meta/checkpoint.b", new)  # between a reader's read of the head and of the stripes
    assert not set(old_stripes) & set(stripes(be)) and len(stripes(be)) == 5
    got = be.blobs.read("meta/checkpoint.b", old_head, lambda: be.meta.read("meta/checkpoint.b", 1 << 20, 0))
    assert got == new  # the old generation is gone: the reader follows the new head, never a mix
    be.put("meta/checkpoint.b", b"small again")
    assert be.get("meta/checkpoint.b") == b"small again" and stripes(be) == []


def test_a_crashed_replace_leaves_the_old_content_and_the_next_one_sweeps(small_backend: RadosBackend) -> None:
    be = small_backend
    first = os.urandom(2 * SMALL + 7)
    be.put("meta/checkpoint.a", first)
    be.blobs._write_stripes("meta/checkpoint.a", os.urandom(3 * SMALL))  # stripes written, head never switched
    assert len(stripes(be)) == 3 + 3
    fresh = RadosBackend(be._cluster, be.pool, be.prefix, max_blob=SMALL)  # another client, as after a restart
    try:
        assert fresh.get("meta/checkpoint.a") == first
        second = os.urandom(2 * SMALL)
        fresh.put("meta/checkpoint.a", second)
        assert fresh.get("meta/checkpoint.a") == second and len(stripes(be)) == 2  # the orphans were swept
        fresh.delete("meta/checkpoint.a")
        assert stripes(be) == [] and not fresh.exists("meta/checkpoint.a")
    finally:
        fresh.meta.close()
        fresh.jrn.close()


def test_a_pool_with_striped_checkpoints_opens_and_checks_clean(ceph_lab: CephLab, rados_location: str,
                                                                tmp_path) -> None:
    loc = parse_rados(rados_location)

    def backend() -> RadosBackend:  # its own client: Store.close closes the backend it was given
        return RadosBackend(connect_cluster(str(ceph_lab.conf), None, CLIENT_TIMEOUT), loc.pool, loc.prefix,
                            owns_cluster=True, max_blob=SMALL)

    with backend() as be:
        sb, _ = init_backend_pool(be, segment_size=16 << 20)
    local = tmp_path / "state"
    (local / "meta").mkdir(parents=True)
    be = backend()
    store = Store.open(str(local), backend=be)
    data = {}
    try:
        for i in range(12):
            vid = store.create_volume(f"v{i}", 8 << 20).id
            for off in range(0, 8 << 20, 1 << 20):  # a map entry per chunk written
                store.write(vid, off, bytes([i + 1]) * 8192)
            data[vid] = store.read(vid, 0, 8 << 20)
        store.checkpoint(both=True)
        ck = read_checkpoints(be, sb.uuid_bytes)
        assert ck.both_valid and len(be.get("meta/checkpoint.a")) > 2 * SMALL and stripes(be)
    finally:
        store.close()
    store = Store.open(str(local), backend=backend())
    try:
        assert not store.recovery.get("damage")
        for vid, want in data.items():
            assert store.read(vid, 0, 8 << 20) == want
    finally:
        store.close()
    with backend() as be:
        check = Store(str(local), load_superblock_from(be), None, backend=be)
        try:
            rep = check_pool(check)
            assert rep.clean, rep.problems
        finally:
            check.journal.close()
