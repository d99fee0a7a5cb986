"""Arrays on a RADOS pool, and two "hosts" of one pool on this machine (the takeover, fencing,
media and state tests): each host is its own state directory ($VSTOR_RADOS_STATE_DIR), its own
daemon process and its own RADOS client, under its own Ceph user. conftest.py makes the
fixtures ``host2_client`` and ``short_dir`` available to every test.

``host2_client`` (session fixture) makes the Ceph user of the second host with the
capabilities the admin guide asks for (``mon 'profile rbd'``: it may blocklist; ``osd 'allow
rwx pool=...'``) and adds its key to the lab's keyring, which every client of the lab reads.
:class:`RadosHost` is a harness Array on a rados:// location for one host.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cephlab import TEST_POOL, CephLab
from harness import Array

__all__ = ["HOST2", "RadosHost", "host2_client", "short_dir"]

HOST2 = "vstor-host2"


@pytest.fixture(scope="session")
def host2_client(ceph_lab: CephLab) -> str:
    """The Ceph client id of the second host (``client.vstor-host2``)."""
    out = ceph_lab.ceph("auth", "get-or-create", f"client.{HOST2}", "mon", "profile rbd",
                        "osd", f"allow rwx pool={TEST_POOL}")
    with open(ceph_lab.keyring, "a") as f:
        f.write("\n" + out.strip() + "\n")
    return HOST2


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short base directory: the control socket's path must fit in sun_path (108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="vt", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


class RadosHost(Array):
    """An Array on a rados:// location seen from one host: ``base/state`` is its state
    directory, ``ceph_id`` its Ceph user (None: admin); ``lock_seconds`` the RADOS lock's
    duration its daemon uses (VSTOR_RADOS_LOCK_SECONDS); ``rados_timeout`` the pool's client
    timeout (``pool init --rados-timeout``; None: the default)."""

    def __init__(self, base: Path, location: str, conf: str, attach: bool = False, ceph_id: str | None = None,
                 lock_seconds: int | None = None, rados_timeout: int | None = None) -> None:
        from vstor.store.backend.location import parse_rados
        self.base = base
        self.mnt = str(base / "mnt")
        self.env = dict(os.environ, VSTOR_POOL=location, VSTOR_CEPH_CONF=conf,
                        VSTOR_RADOS_STATE_DIR=str(base / "state"))
        if lock_seconds is not None:
            self.env["VSTOR_RADOS_LOCK_SECONDS"] = str(lock_seconds)
        loc = parse_rados(location)
        self.pool = str(base / "state" / loc.pool / loc.prefix)  # stub.state_dir for this host
        self.location = location
        self.mounts, self.netns, self.start_args, self.key_file = [], None, [], None
        init = ["pool", "init", location, "--segment-size", "16M"]
        if attach:
            init.append("--attach")
        if ceph_id:
            init += ["--ceph-id", ceph_id]
        if rados_timeout is not None:
            init += ["--rados-timeout", str(rados_timeout)]
        self.vstor(*init)
