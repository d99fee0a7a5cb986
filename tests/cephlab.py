"""The RADOS tests' Ceph cluster: one throwaway one-node cluster per pytest session (memstore,
127.0.0.1 only), brought up by vm/ceph.py (shared with the RADOS benchmark, tools/benchlib/ceph.py).

``CephLab(dir)`` is a :class:`vm.ceph.Cluster` on memstore: ``up()``, ``pool(name)``,
``delete_pool``, ``ceph(...)``, ``pids``/``check_alive``/``osd_pid`` and ``down()`` are described
there, with the traps the bring-up avoids. Memstore keeps the data in the OSD's RAM (capped by
MEMSTORE_BYTES) and loses it when the OSD dies (SIGSTOP/SIGCONT keeps it). A single OSD that dies
stays "up" for 15 minutes, so test clients get ``rados_osd_op_timeout`` (CLIENT_TIMEOUT).
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# vm/ is not installed with vstor: the repo root, for helpers run in child processes whose
# sys.path holds only tests/ (test_defrag's crash children)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vm.ceph import MEMSTORE_BYTES, CephError, Cluster, ceph_missing  # noqa: E402

__all__ = ["CLIENT_TIMEOUT", "MEMSTORE_BYTES", "TEST_POOL", "CephError", "CephLab", "ceph_available", "ceph_lab",
           "rados_location", "remove_prefixes"]

CLIENT_TIMEOUT = 3  # seconds: rados_osd_op_timeout and client_mount_timeout of test clients


def ceph_available() -> str | None:
    """Why the RADOS tests cannot run here, or None."""
    why = ceph_missing()
    if why:
        return why
    try:
        import rados  # noqa: F401
    except ImportError:
        return "needs python3-rados: run the tests with .venv-rados/bin/python ('make test-rados')"
    return None


class CephLab(Cluster):
    """The test cluster: memstore (vm/ceph.py's Cluster with the store kind fixed)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, "memstore")


# -- pytest fixtures (imported by conftest.py) ------------------------------------------------
TEST_POOL = "vstor-test"


@pytest.fixture(scope="session")
def ceph_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephLab]:
    """One cluster for the whole session, with the RADOS pool TEST_POOL; torn down at the end,
    also when a test or the bring-up itself fails."""
    why = ceph_available()
    if why:
        pytest.skip(why)
    lab = CephLab(tmp_path_factory.mktemp("ceph") / "cluster")
    try:
        lab.up()
        lab.pool(TEST_POOL)
        yield lab
    finally:
        lab.down()


@pytest.fixture
def rados_location(ceph_lab: CephLab) -> Iterator[str]:
    """A fresh rados://TEST_POOL/PREFIX for one test (its own RADOS namespaces); every object
    under it (PREFIX, PREFIX/journal, PREFIX/media, ...) is removed afterwards."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    yield f"rados://{TEST_POOL}/{prefix}"
    remove_prefixes(ceph_lab, [prefix])


def remove_prefixes(lab: CephLab, prefixes: list[str]) -> None:
    """Remove every object of TEST_POOL in a namespace PREFIX or PREFIX/..., for each prefix."""
    import rados

    cluster = rados.Rados(conffile=str(lab.conf), conf={"rados_osd_op_timeout": str(CLIENT_TIMEOUT)})
    cluster.connect(timeout=CLIENT_TIMEOUT)
    try:
        with cluster.open_ioctx(TEST_POOL) as io:
            io.set_namespace(rados.LIBRADOS_ALL_NSPACES)
            mine = [(o.nspace, o.key) for o in io.list_objects()
                    if any(o.nspace == p or o.nspace.startswith(p + "/") for p in prefixes)]
            for ns, key in mine:
                io.set_namespace(ns)
                with contextlib.suppress(rados.ObjectNotFound):
                    io.remove_object(key)
    finally:
        cluster.shutdown()
