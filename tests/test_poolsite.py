"""The both-backend fixture itself (tests/poolsite.py): a [rados] pool is really on RADOS, the
damage helpers reach its objects, and nothing of it is left in the cluster afterwards."""

from __future__ import annotations

import pytest
from cephlab import TEST_POOL, CephLab
from poolkit import MiB, make_pool, seg_flip, seg_list, seg_read
from poolsite import RadosPools

from vstor.store.backend.stub import read_stub
from vstor.store.store import Store


@pytest.mark.rados
def test_a_rados_test_pool_lives_in_rados_and_is_removed_after(ceph_lab: CephLab, tmp_path) -> None:
    import rados

    pools = RadosPools(ceph_lab)
    pool = pools.make_pool(str(tmp_path / "pool"), segment_size=16 * MiB)
    try:
        stub = read_stub(pool)
        assert stub is not None and stub["location"].startswith(f"rados://{TEST_POOL}/p-")
        store = Store.open(pool)
        vid = store.create_volume("v", MiB).id
        store.write(vid, 0, b"x" * 4096)
        store.close()
        (segno,) = seg_list(pool)
        before = seg_read(pool, segno)
        seg_flip(pool, segno, 100)
        after = seg_read(pool, segno)
        assert len(after) == len(before) and after[100] == before[100] ^ 0x5A and after[:100] == before[:100]
    finally:
        prefix = pools.prefixes[0]
        cluster = rados.Rados(conffile=str(ceph_lab.conf))
        cluster.connect(timeout=10)
        with cluster.open_ioctx(TEST_POOL) as io:  # as a cartridge in the pool's media area would be
            io.set_namespace(f"{prefix}/media")
            io.write_full("VT0001L9.0000", b"tape")
        pools.cleanup()
    try:
        with cluster.open_ioctx(TEST_POOL) as io:
            io.set_namespace(rados.LIBRADOS_ALL_NSPACES)
            left = [(o.nspace, o.key) for o in io.list_objects() if o.nspace.split("/")[0] == prefix]
    finally:
        cluster.shutdown()
    assert left == []


@pytest.mark.usefixtures("pool_backend")
def test_make_pool_makes_the_variant_s_kind_of_pool(pool_backend: str, tmp_path) -> None:
    pool = make_pool(tmp_path)
    assert (read_stub(pool) is not None) == (pool_backend == "rados")
