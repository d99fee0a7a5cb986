"""The backup catalog of a fenced owner stays fenced after the blocklist ends
(backup/sqlitefile.py's commit guard, RadosLock.assert_held, FencedBackend.check_owner).

Host A holds the pool (PoolLock, its store backend, the catalog through libcephsqlite) with a
lock of an hour, so no renewal runs during the test: it stands for a daemon frozen since its
last renewal. B takes the pool over, which blocklists A's clients for
$VSTOR_RADOS_BLOCKLIST_SECONDS (checked in the OSD map); then the blocklist is removed, as its
expiry would, and A wakes: its catalog commit is refused (the pool's lock is not A's: the OSD
says so) and rolled back, and every later one is refused without asking. Needs the session's
Ceph cluster (``make test-rados``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cephlab import CLIENT_TIMEOUT, CephLab

from vstor.store.backend.location import open_backend
from vstor.store.backend.rados.lock import BLOCKLIST_ENV, RadosLock

pytestmark = pytest.mark.rados

HOST_A = """
import json, sys
from vstor.backup.catalog import BackupCatalog
from vstor.backup.catalogdb import catalog_databases, vfs_client
from vstor.clock import SystemClock
from vstor.control.host.lock import PoolLock
from vstor.faults import NO_FAULTS
pool = sys.argv[1]
lock = PoolLock(pool)
lock.acquire("daemon")
store_backend = lock.store_backend(NO_FAULTS)  # the daemon's: FencedBackend on the lock's client
catalog = BackupCatalog("catalog.db", SystemClock(), catalog_databases(pool, store_backend))
catalog.put_policy({"name": "before"})
print(json.dumps({"holder": lock.rados.holder_record(), "vfs": vfs_client()}), flush=True)
for name in iter(sys.stdin.readline, ""):
    try:
        catalog.put_policy({"name": name.strip()})
        print("wrote", flush=True)
    except Exception as e:
        print("refused:", type(e).__name__, e, flush=True)
print(json.dumps([p["name"] for p in catalog.policies()]), flush=True)
"""


def blocklist(lab: CephLab) -> dict[str, str]:
    """The OSD map's blocklist: address -> until when (as `ceph osd blocklist ls` prints it)."""
    raw = lab.ceph("osd", "blocklist", "ls", "-f", "json").strip() or "[]"
    out, _end = json.JSONDecoder().raw_decode(raw)  # the addresses; then the ranges (16.2.15 prints both)
    return {e["addr"]: e["until"] for e in out}


def test_a_fenced_owner_commits_nothing_to_the_catalog_after_its_blocklist_ends(
        ceph_lab: CephLab, rados_location: str, host2_client: str, short_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from radoshosts import RadosHost
    host = RadosHost(short_dir / "A", rados_location, str(ceph_lab.conf), lock_seconds=3600)
    a = subprocess.Popen([sys.executable, "-c", HOST_A, host.pool], env=host.env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    b = open_backend(rados_location, str(ceph_lab.conf), host2_client, timeout=CLIENT_TIMEOUT)
    fenced_addrs: list[str] = []
    try:
        seen = json.loads(a.stdout.readline())
        monkeypatch.setenv(BLOCKLIST_ENV, str(2 * 24 * 3600))
        new = RadosLock(b.meta, duration=30, location=rados_location, cluster=b.cluster)
        asked = time.time()
        fenced = new.acquire(takeover=True)
        assert fenced is not None and seen["vfs"]["addr"] in fenced["addrs"]
        fenced_addrs = fenced["addrs"]
        listed = blocklist(ceph_lab)
        for addr in fenced_addrs:  # for the configured two days, not the monitor's hour
            until = time.mktime(time.strptime(listed[addr][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
            assert abs(until - (asked + 2 * 24 * 3600)) < 120, (addr, listed[addr])
        for addr in fenced_addrs:  # the blocklist ends, as its expiry would
            ceph_lab.ceph("osd", "blocklist", "rm", addr)
        b.cluster.wait_for_latest_osdmap()
        assert not set(fenced_addrs) & set(blocklist(ceph_lab))
        a.stdin.write("after\nagain\n")
        a.stdin.close()
        first, second, names = a.stdout.readline(), a.stdout.readline(), a.stdout.readline()
        assert first.startswith("refused: ReadOnly") and "lost ownership" in first, first
        assert second.startswith("refused: ReadOnly"), second
        assert json.loads(names) == ["before"]  # rolled back: nothing of A's after the takeover
        new.release()
    finally:
        a.kill()
        a.wait()
        b.close()
        for addr in fenced_addrs:  # a test that failed early leaves no blocklist behind
            if addr in blocklist(ceph_lab):
                ceph_lab.ceph("osd", "blocklist", "rm", addr)
