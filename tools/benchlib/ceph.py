"""A throwaway one-node Ceph cluster for benchmarks: BlueStore on a sparse file, 127.0.0.1 only.

``BenchCluster(dir)`` is a Staged resource around vm/ceph.py's Cluster (the bring-up the RADOS
tests use too, with ``store="bluestore"``): entering writes a ceph.conf and per-daemon keyrings
under ``dir``, makes and starts one monitor, one manager and one OSD whose BlueStore block device
is a sparse file (``dir/osd.0/block``, BLOCK_BYTES: it costs only what is written), waits until
the OSD is up and the manager available, and returns the path of ceph.conf. Leaving kills every
daemon it started (by the PID files under ``dir``, only if that PID still runs a daemon with this
ceph.conf) and removes ``dir``, also after an error or a signal. The cluster's errors come out
as BenchError.

BlueStore, not memstore: memstore keeps every byte in the OSD's RAM (about twice the data) and
answers without a disk, so its figures say nothing about a real cluster. Clients: ``[client] rbd
cache = false``, so that librbd acknowledges a write once the OSD has committed it (see
docs/benchmarks.md, "fio on RADOS"), and no admin socket.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from vm.ceph import BLOCK_BYTES, CephError, Cluster
from vm.ceph import ceph_missing as _missing

from .procs import BenchError, Staged, best_effort

__all__ = ["BLOCK_BYTES", "BenchCluster", "ceph_missing"]

CLIENT_CONF = "rbd cache = false\nadmin socket ="
TOOLS = ("rados", "rbd")  # bench_rados's clients, beside the daemons and the ceph command


def ceph_missing() -> str | None:
    """Why no cluster and clients can be brought up here, or None."""
    return _missing(TOOLS)


@contextlib.contextmanager
def _bench_errors() -> Iterator[None]:
    try:
        yield
    except CephError as e:
        raise BenchError(str(e)) from e


class BenchCluster(Staged[Path]):
    def __init__(self, directory: Path, block_bytes: int = BLOCK_BYTES) -> None:
        super().__init__()
        self.cluster = Cluster(directory, "bluestore", block_bytes=block_bytes, client_conf=CLIENT_CONF)
        self.dir, self.conf, self.block_bytes = self.cluster.dir, self.cluster.conf, block_bytes

    @property
    def up_seconds(self) -> float:
        return self.cluster.up_seconds

    def ceph(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        with _bench_errors():
            return self.cluster.ceph(*args, stdin=stdin, timeout=timeout)

    def env(self) -> dict[str, str]:
        """The environment for librados clients (fio's rbd engine, rados, rbd): CEPH_CONF."""
        return self.cluster.env()

    def setup(self) -> Path:
        self.dir.mkdir(parents=True)
        self.stack.callback(best_effort(f"tear down the Ceph cluster in {self.dir}", self._down))
        with _bench_errors():
            self.cluster.up(timeout=120)
        return self.conf

    def pool(self, name: str, application: str) -> str:
        """A fresh replicated size-1 pool of 8 PGs, once its PGs are active+clean."""
        with _bench_errors():
            return self.cluster.pool(name, application)

    def pids(self) -> dict[str, int]:
        return self.cluster.pids()

    def check_alive(self) -> None:
        with _bench_errors():
            self.cluster.check_alive()

    def _down(self) -> None:
        with _bench_errors():
            self.cluster.down()
