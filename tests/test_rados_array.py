"""An array on a RADOS pool: `pool init rados://...`, `array start --pool rados://...`, a
volume written through FUSE that reads back after a restart, and a second host (another
state directory, another RADOS client) refused while the first owns the pool, then served
once it stops. Needs root (FUSE) and the session's Ceph cluster (``make test-rados``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cephlab import CephLab
from harness import Array, one_error_line, read_direct

pytestmark = [pytest.mark.root, pytest.mark.rados]
MiB = 1 << 20


class RadosArray(Array):
    """An Array whose pool is a rados:// location; ``host`` names its state directory."""

    def __init__(self, base: Path, location: str, conf: str, attach: bool = False) -> None:
        from vstor.store.backend.stub import state_dir
        self.base = base
        self.mnt = str(base / "mnt")
        self.env = dict(os.environ, VSTOR_POOL=location, VSTOR_CEPH_CONF=conf,
                        VSTOR_RADOS_STATE_DIR=str(base / "state"))
        saved = os.environ.get("VSTOR_RADOS_STATE_DIR")
        os.environ["VSTOR_RADOS_STATE_DIR"] = str(base / "state")
        try:
            self.pool = state_dir(location)  # what _lock_pid and cleanup look at
        finally:
            if saved is None:
                del os.environ["VSTOR_RADOS_STATE_DIR"]
            else:
                os.environ["VSTOR_RADOS_STATE_DIR"] = saved
        self.mounts, self.netns, self.start_args, self.key_file = [], None, [], None
        self.vstor("pool", "init", location, "--segment-size", "16M", *(["--attach"] if attach else []))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short base directory: the control socket's path must fit in sun_path (108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="vr", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_fuse_volume_on_rados_survives_restart_and_one_owner_at_a_time(ceph_lab: CephLab, rados_location: str,
                                                                         short_dir: Path) -> None:
    conf = str(ceph_lab.conf)
    tmp_path = short_dir
    a = RadosArray(tmp_path / "hostA", rados_location, conf)
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
        b = RadosArray(tmp_path / "hostB", rados_location, conf, attach=True)
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
