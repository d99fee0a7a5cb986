"""A RADOS pool's state files (consumer positions, pairs and their bitmaps, NBD exports, admins,
compliance locks, backup key ids, the audit log, library files, the last check) live in the cluster, not on the
host: written through one host's state directory, they are read through another's (same
rados:// location, its own RADOS client), and the first host's directory holds none of them.
Needs the session's Ceph cluster (``make test-rados``)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pyotp
import pytest
from cephlab import CephLab
from poolkit import SEG

from vstor.backup.admins import AdminStore
from vstor.backup.audit import AuditLog
from vstor.backup.keys import BackupKeys
from vstor.clock import ManualClock
from vstor.control.status_ops import last_check, record_check
from vstor.media.manager import MediaManager
from vstor.nbd import exportfile
from vstor.nbd.catalog import ExportCatalog
from vstor.nbd.exportfile import ExportSpec
from vstor.replication.bitmap import GRANULE, DirtyBitmap
from vstor.replication.pairstate import Pair
from vstor.replication.registry import Registry
from vstor.store.backend.location import open_backend
from vstor.store.backend.stub import write_stub
from vstor.store.catalog import compliance
from vstor.store.journal.consumers import COPY, consumer_problems
from vstor.store.store import Store
from vstor.store.superblock import DEFAULT_CHUNK, Superblock, format_backend

pytestmark = pytest.mark.rados
ROOT = bytes(range(32))
DAY = 86400.0


def _host(base: Path, location: str, conf: str) -> str:
    """A host's state directory for the pool: only the stub that names the location."""
    write_stub(str(base), location, conf, None)
    return str(base)


def _new_pool(lab: CephLab, location: str) -> None:
    with open_backend(location, ceph_conf=str(lab.conf)) as be:
        format_backend(be, Superblock(str(uuid.uuid4()), DEFAULT_CHUNK, SEG, "none", False, "", "", time.time()))


def _files_under(directory: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), directory) for d, _s, fs in os.walk(directory) for f in fs)


def test_state_files_follow_the_pool_to_a_second_host(ceph_lab: CephLab, rados_location: str,
                                                      tmp_path: Path) -> None:
    conf = str(ceph_lab.conf)
    _new_pool(ceph_lab, rados_location)
    clock = ManualClock()
    host_a = _host(tmp_path / "hostA", rados_location, conf)
    before = _files_under(host_a)
    maps = {1: DirtyBitmap(64 * GRANULE)}
    maps[1].mark(3 * GRANULE, 5 * GRANULE)
    spec = ExportSpec("e1", "v", None, True, ("client-a",), False)

    a = Store.open(host_a, clock=clock)  # host A: the daemon's objects, on the store's files
    try:
        a.consumers.register("repl", (1, 64))
        a.consumers.commit("repl", (1, 4096))
        reg = Registry(a.files.sub("meta"))
        reg.save(Pair("g", "127.0.0.1:7450", "site-b", "g", "primary"))
        reg.save_bitmap("g", maps)
        ExportCatalog(a).put(spec)
        secret = AdminStore(a.files.sub("backup"), clock).enroll("alice", "root")["secret"]
        cc, locks = compliance.for_pool(a.files, clock)
        locks.set("job:7", clock.time() + 30 * DAY, cc.now(), "alice", "backup job 7")
        assert BackupKeys(a.files.sub("backup"), ROOT, clock).rotate() == 1
        first = AuditLog(a.files.sub("backup"), clock).append("alice", "key.rotate", {"key_id": 1})
        MediaManager(host_a, files=a.files).create_library("lib", "tape", 4, 1, 1)
        record_check(a.files, {"clean": True, "problems": [], "repairs": [], "bytes_verified": 4096})
    finally:
        a.close()
    new_here = [f for f in _files_under(host_a) if f not in before]
    assert new_here == [], f"state files written on the host instead of the cluster: {new_here}"

    with open_backend(rados_location, ceph_conf=conf) as be:  # the objects, named like the local files
        assert set(be.list_blobs("meta")) >= {"meta/consumers.json", "meta/consumers.json.copy",
                                              "meta/nbd_exports.json", "meta/locks.json",
                                              "meta/compliance-clock.json", "meta/last_check.json"}
        assert be.list_blobs("meta/pairs") == ["meta/pairs/g.bitmap", "meta/pairs/g.json"]
        assert be.list_blobs("backup") == ["backup/admins.json", "backup/audit.log", "backup/keys.json"]
        assert be.list_blobs("media") == ["media/lib.json"]
        assert be.get("meta/nbd_exports.json") == exportfile.encode([spec])  # the local file's bytes

    host_b = _host(tmp_path / "hostB", rados_location, conf)  # the second host: its own client
    b = Store.open(host_b, clock=clock)
    try:
        assert b.consumers.positions() == {"repl": (1, 4096)}
        reg = Registry(b.files.sub("meta"))
        assert reg.load_all()["g"].peer_name == "site-b"
        assert {v: bytes(m.bits) for v, m in reg.load_bitmap("g").items()} == {1: bytes(maps[1].bits)}
        assert ExportCatalog(b).specs() == [spec]
        admins = AdminStore(b.files.sub("backup"), clock)
        assert admins.names() == ["alice"]
        admins.verify("alice", pyotp.TOTP(secret).at(clock.time()))  # the secret enrolled on host A
        cc, locks = compliance.for_pool(b.files, clock)
        assert locks.until("job:7") == clock.time() + 30 * DAY
        assert [k["id"] for k in BackupKeys(b.files.sub("backup"), ROOT, clock).listing()] == [1]
        audit = AuditLog(b.files.sub("backup"), clock)
        assert audit.entries() == [first]
        assert audit.append("bob", "key.rotate", {"key_id": 2})["prev"] == first["hash"]  # the chain goes on
        assert audit.verify(anchor=first["hash"]) == [] and len(audit.entries()) == 2
        assert list(MediaManager(host_b, files=b.files).libs) == ["lib"]
        assert last_check(b.files)["bytes_verified"] == 4096
        # a damaged object is found and named by its RADOS location, as a damaged file by its path
        meta = b.files.sub("meta")
        meta.write(COPY, meta.read(COPY).replace(b":", b": ", 1))  # same JSON, not the form vstor writes
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

    from test_rados_array import RadosArray

    conf = str(ceph_lab.conf)
    base = Path(tempfile.mkdtemp(prefix="vs", dir="/tmp"))  # short: the control socket's path
    a = b = None
    try:
        a = RadosArray(base / "hostA", rados_location, conf)
        a.start()
        a.create("v", "16M")
        a.vstor("volume", "export", "v", "--read-only")
        a.vstor("library", "create", "lib", "--type", "tape", "--slots", "4", "--drives", "1", "--mailslots", "1")
        a.stop()
        b = RadosArray(base / "hostB", rados_location, conf, attach=True)
        b.start()
        exports = b.vstor_json("volume", "exports")
        assert [(e["name"], e["read_only"]) for e in exports] == [("v", True)], exports
        libs = b.vstor_json("library", "list")
        assert [lib["name"] for lib in libs] == ["lib"], libs
        b.stop()
    finally:
        for arr in (a, b):
            if arr is not None:
                arr.cleanup()
        shutil.rmtree(base, ignore_errors=True)
