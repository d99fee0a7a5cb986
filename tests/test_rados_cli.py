"""vstor pool init rados://CEPHPOOL/PREFIX: its usage errors (no cluster needed), and a pool
made on the session's Ceph cluster that the store then opens, writes and reads back."""

from __future__ import annotations

import json
import os

import pytest
from cephlab import CLIENT_TIMEOUT, CephLab
from harness import VSTOR, one_error_line, run

from vstor.store.backend.location import open_backend
from vstor.store.store import Store


def test_bad_rados_locations_are_usage_errors(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VSTOR_CEPH_CONF"}
    for bad in ("rados://", "rados://onlypool", "rados://pool/"):
        r = run([VSTOR, "pool", "init", bad], check=False, env=env)
        assert "bad RADOS pool location" in one_error_line(r, bad) and r.returncode == 2
    r = run([VSTOR, "pool", "init", "rados://pool/lab"], check=False, env=env)
    assert "--ceph-conf" in one_error_line(r, "no conf") and r.returncode == 2


@pytest.mark.rados
def test_pool_init_on_rados_then_the_store_uses_it(ceph_lab: CephLab, rados_location: str, tmp_path) -> None:
    env = dict(os.environ, VSTOR_CEPH_CONF=str(ceph_lab.conf))
    r = run([VSTOR, "pool", "init", rados_location, "--compress", "lz4", "--segment-size", "16M", "--json"], env=env)
    made = json.loads(r.stdout)
    assert made["pool"] == rados_location and made["segment_size"] == 16 << 20 and made["compress"] == "lz4"
    r = run([VSTOR, "pool", "init", rados_location, "--ceph-conf", str(ceph_lab.conf)], check=False)
    assert "already holds a vstor pool" in one_error_line(r, "again") and r.returncode == 4
    local = tmp_path / "state"
    (local / "meta").mkdir(parents=True)
    store = Store.open(str(local), backend=open_backend(rados_location, str(ceph_lab.conf), timeout=CLIENT_TIMEOUT))
    try:
        assert store.sb.uuid == made["uuid"]
        vol = store.create_volume("v", 1 << 20)
        store.write(vol.id, 4096, b"on rados" * 512)
        store.sync()
    finally:
        store.close()
    store = Store.open(str(local), backend=open_backend(rados_location, str(ceph_lab.conf), timeout=CLIENT_TIMEOUT))
    try:
        assert store.read(vol.id, 4096, 4096) == b"on rados" * 512
    finally:
        store.close()
