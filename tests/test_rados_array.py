"""An array on a RADOS pool: `pool init rados://...`, `array start --pool rados://...`, a
volume written through FUSE that reads back after a restart, and a second host (another
state directory, another RADOS client) refused while the first owns the pool, then served
once it stops. Needs root (FUSE) and the session's Ceph cluster (``make test-rados``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cephlab import CephLab
from harness import one_error_line, read_direct
from radoshosts import RadosHost

pytestmark = [pytest.mark.root, pytest.mark.rados]
MiB = 1 << 20


def test_fuse_volume_on_rados_survives_restart_and_one_owner_at_a_time(ceph_lab: CephLab, rados_location: str,
                                                                         short_dir: Path) -> None:
    conf = str(ceph_lab.conf)
    tmp_path = short_dir
    a = RadosHost(tmp_path / "hostA", rados_location, conf)
    b = None
    try:
        a.start()
        a.create("v", "16M")
        data = os.urandom(3 * MiB + 4096)
        fd = os.open(a.image("v"), os.O_RDWR)
        try:
            os.pwrite(fd, data, 4 * MiB)
            os.fsync(fd)
        finally:
            os.close(fd)
        a.stop()
        a.start()
        assert read_direct(a.image("v"), 4 * MiB, len(data)) == data
        b = RadosHost(tmp_path / "hostB", rados_location, conf, attach=True)
        r = b.start(check=False)
        assert "owned by vstor daemon" in one_error_line(r, "second owner"), r.stderr
        a.stop()
        b.start()  # the first released it: served from the other host
        assert read_direct(b.image("v"), 4 * MiB, len(data)) == data
        b.stop()
        r = b.vstor("pool", "check", rados_location, check=False)  # offline, through the location
        assert r.returncode == 0 and "clean" in r.stdout, r.stdout + r.stderr
    finally:
        a.cleanup()
        if b is not None:
            b.cleanup()
