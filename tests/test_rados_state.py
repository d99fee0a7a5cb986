"""A RADOS pool's state files (tests/statekit.py: consumer positions, a pair and its bitmap, an
NBD export, an admin, a compliance lock, backup key ids, the audit log, a library and a shelf
record, a client key, a setting, the last check) live in the cluster, not on the host: written
through one host's state directory, they are read through another's (same rados:// location,
its own RADOS client), and the first host's directory holds none of them. A daemon started on
the second host serves what the first one's made. Needs the session's Ceph cluster (``make
test-rados``)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from cephlab import CephLab
from poolkit import SEG
from statekit import WRITTEN, check_state, files_under, write_state

from vstor.clock import ManualClock
from vstor.nbd import exportfile
from vstor.store.backend.location import open_backend
from vstor.store.backend.statefiles import PoolFiles, is_state_file
from vstor.store.backend.stub import write_stub
from vstor.store.journal.consumers import COPY, consumer_problems
from vstor.store.store import Store
from vstor.store.superblock import DEFAULT_CHUNK, Superblock, format_backend

pytestmark = pytest.mark.rados


def _host(base: Path, location: str, conf: str) -> str:
    """A host's state directory for the pool: only the stub that names the location."""
    write_stub(str(base), location, conf, None)
    return str(base)


def _new_pool(lab: CephLab, location: str) -> None:
    with open_backend(location, ceph_conf=str(lab.conf)) as be:
        format_backend(be, Superblock(str(uuid.uuid4()), DEFAULT_CHUNK, SEG, "none", False, "", "", time.time()))


def test_state_files_follow_the_pool_to_a_second_host(ceph_lab: CephLab, rados_location: str,
                                                      tmp_path: Path) -> None:
    conf = str(ceph_lab.conf)
    _new_pool(ceph_lab, rados_location)
    clock = ManualClock()
    host_a = _host(tmp_path / "hostA", rados_location, conf)
    a = Store.open(host_a, clock=clock)  # host A: the daemon's objects, on the store's files
    try:
        written = write_state(a, clock)
    finally:
        a.close()
    on_host = [f for f in files_under(host_a) if is_state_file(f)]
    assert on_host == [], f"state files written on the host instead of the cluster: {on_host}"

    with open_backend(rados_location, ceph_conf=conf) as be:  # the objects, named like the local files
        names = [f"{d}/{n}" for d in ("meta", "meta/pairs", "backup", "backup/clients", "media",
                                      "media/lib/shelf") for n in PoolFiles(be).sub(d).names()]
        assert sorted(n for n in names if is_state_file(n)) == WRITTEN
        assert be.get("meta/nbd_exports.json") == exportfile.encode([written.spec])  # the local file's bytes

    host_b = _host(tmp_path / "hostB", rados_location, conf)  # the second host: its own client
    b = Store.open(host_b, clock=clock)
    try:
        check_state(b, clock, written)
        # a damaged object is found and named by its RADOS location, as a damaged file by its path
        meta = b.files.sub("meta")
        meta.write(COPY, (meta.read(COPY) or b"").replace(b":", b": ", 1))  # same JSON, not the form vstor writes
        problems = consumer_problems(meta)
        assert len(problems) == 1 and f"{rados_location}/meta/{COPY}" in problems[0], problems
        assert b.consumers.positions() == {"repl": (1, 4096)}
    finally:
        b.close()


@pytest.mark.root
def test_daemon_on_a_second_host_serves_the_exports_and_libraries_made_on_the_first(
        ceph_lab: CephLab, rados_location: str) -> None:
    """``array start`` on host B after host A stopped: the export and the library made through
    host A's daemon are B's too (read from the cluster, not from B's state directory)."""
    import shutil
    import tempfile

    from radoshosts import RadosHost

    conf = str(ceph_lab.conf)
    base = Path(tempfile.mkdtemp(prefix="vs", dir="/tmp"))  # short: the control socket's path
    a = b = None
    try:
        a = RadosHost(base / "hostA", rados_location, conf)
        a.start()
        a.create("v", "16M")
        a.vstor("volume", "export", "v", "--read-only")
        a.vstor("library", "create", "lib", "--type", "tape", "--slots", "4", "--drives", "1", "--mailslots", "1")
        a.stop()
        b = RadosHost(base / "hostB", rados_location, conf, attach=True)
        b.start()
        exports = b.vstor_json("volume", "exports")["exports"]
        assert [(e["name"], e["read_only"]) for e in exports] == [("v", True)], exports
        libs = b.vstor_json("library", "list")
        assert [lib["name"] for lib in libs] == ["lib"], libs
        b.stop()
    finally:
        for arr in (a, b):
            if arr is not None:
                arr.cleanup()
        shutil.rmtree(base, ignore_errors=True)
