"""Takeover of a pool's RADOS lock from a live owner (vstor/store/backend/rados/lock.py):
without --takeover the second host is refused and told about it; with it, the owner's client
is blocklisted, its lock broken and the lock taken. The fenced owner's operations then fail
with ESHUTDOWN, its renewal reports it fenced, the daemon's backend (rados/fenced.py) trips its hook
once, and it never gets the lock back by itself. Two RADOS clients under two Ceph users, the
second with only the capabilities the admin guide asks for. Needs the session's Ceph cluster
(``make test-rados``)."""

from __future__ import annotations

import errno
import json
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cephlab import CLIENT_TIMEOUT, CephLab

from vstor.errors import Busy
from vstor.store.backend.location import open_backend, parse_rados

pytestmark = pytest.mark.rados
DURATION = 3  # seconds: renewals every 1 s


def test_takeover_fences_a_live_owner_for_good(ceph_lab: CephLab, rados_location: str, host2_client: str) -> None:
    from vstor.store.backend.rados.fenced import FencedBackend
    from vstor.store.backend.rados.lock import LockLost, RadosLock
    conf = str(ceph_lab.conf)
    a = open_backend(rados_location, conf, timeout=CLIENT_TIMEOUT)  # host A: client.admin
    b = open_backend(rados_location, conf, host2_client, timeout=CLIENT_TIMEOUT)  # host B: its own user
    loc = parse_rados(rados_location)
    tripped: list[OSError] = []
    fa = FencedBackend(a.cluster, loc.pool, loc.prefix, tripped.append)  # A's store, on A's client
    lost: list[Exception] = []
    got = threading.Event()
    try:
        owner = RadosLock(a.meta, duration=DURATION, location=rados_location, cluster=a.cluster)
        assert owner.acquire() is None
        owner.start_renewal(lambda e: (lost.append(e), got.set()))
        fa.put("probe", b"before")
        new = RadosLock(b.meta, duration=DURATION, location=rados_location, cluster=b.cluster)
        with pytest.raises(Busy, match=r"owned by vstor daemon pid \d+ .*client\.\d+ at .*--takeover"):
            new.acquire()
        started = time.monotonic()
        fenced = new.acquire(takeover=True)
        took = time.monotonic() - started
        assert fenced is not None and fenced["client"] == f"client.{a.cluster.get_instance_id()}", fenced
        assert fenced["cookie"] == owner.cookie
        assert took < DURATION, f"the takeover took {took:.1f} s: it waited for the lock to expire"
        assert new.holder_record()["cookie"] == new.cookie  # the record came with the lock
        with pytest.raises(OSError, match="fenced") as e:
            fa.put("probe", b"after")  # A's writes are refused by the OSD now
        assert e.value.errno == errno.ESHUTDOWN
        with pytest.raises(OSError):
            fa.put("probe", b"again")
        assert len(tripped) == 1, tripped  # the hook fires once
        assert got.wait(DURATION + CLIENT_TIMEOUT + 2), "the old owner's renewal never noticed"
        assert "fenced" in str(lost[0]), lost
        assert b.get("probe") == b"before"
        new.release()  # the lock is free now: the old owner still cannot renew it into its own
        with pytest.raises(LockLost):
            owner.renew()
        owner.release()
        third = RadosLock(b.meta, duration=DURATION, location=rados_location, cluster=b.cluster)
        assert third.acquire() is None  # nobody held it: no fencing
        third.release()
    finally:
        fa.close()
        a.close()
        b.close()


def test_expired_lock_is_not_renewed_back_and_its_takeover_fences_nobody(ceph_lab: CephLab,
                                                                         rados_location: str) -> None:
    from vstor.store.backend.rados.lock import LockLost, RadosLock
    conf = str(ceph_lab.conf)
    a, b = (open_backend(rados_location, conf, timeout=CLIENT_TIMEOUT) for _ in range(2))
    try:
        dead = RadosLock(a.meta, duration=2, location=rados_location, cluster=a.cluster)
        dead.acquire()
        dead.renew()  # renewed once, for exactly 2 s (python3-rados' lock_exclusive added up to 4.3 s)
        time.sleep(2.3)  # then never again: it expires
        with pytest.raises(LockLost, match="lost ownership.*expired or was broken"):
            dead.renew()  # a paused owner back after its lock expired does not take it again
        new = RadosLock(b.meta, duration=DURATION, location=rados_location, cluster=b.cluster)
        assert new.acquire(takeover=True) is None
        a.put("probe", b"a is not fenced")  # nobody was blocklisted
        new.release()
    finally:
        a.close()
        b.close()


def _expiry(io: object, name: str) -> float:
    """When the OSD lets the (one) locker of lock ``name`` on the lock object expire: its
    ``lock.get_info`` reply (cls_lock_get_info_reply: struct header, le32 count of lockers,
    each a locker_id_t struct then a locker_info_t struct starting with its utime_t)."""
    from vstor.store.backend.rados.lock import LOCK_OBJECT
    raw = name.encode()
    _, out = io.execute(LOCK_OBJECT, "lock", "get_info", struct.pack("<BBII", 1, 1, 4 + len(raw), len(raw)) + raw)
    (count,) = struct.unpack_from("<I", out, 6)
    assert count == 1, count
    (id_len,) = struct.unpack_from("<I", out, 12)
    sec, nsec = struct.unpack_from("<II", out, 10 + 6 + id_len + 6)
    return sec + nsec / 1e9


def test_a_renewal_extends_the_lock_by_exactly_its_duration(ceph_lab: CephLab, rados_location: str) -> None:
    from vstor.store.backend.rados.lock import LOCK_NAME, RadosLock
    a = open_backend(rados_location, str(ceph_lab.conf), timeout=CLIENT_TIMEOUT)
    try:
        lock = RadosLock(a.meta, duration=30, location=rados_location, cluster=a.cluster)
        for i in range(10):  # python3-rados' lock_exclusive added 0 to 4.3 s at random (uninitialised microseconds)
            asked = time.time()
            lock.renew() if i else lock.acquire()
            late = _expiry(a.meta, LOCK_NAME) - (asked + 30)  # the OSD runs on this machine: one clock
            assert -0.1 < late < 0.5, f"renewal {i}: the lock expires {late:+.3f} s from its duration"
        lock.release()
    finally:
        a.close()


HOST_A = """
import json, sys
from vstor.backup.catalogdb import catalog_databases, vfs_client
from vstor.control.host.lock import PoolLock
from vstor.store.backend.stub import backend_for
pool = sys.argv[1]
lock = PoolLock(pool)
lock.acquire("daemon")
db = catalog_databases(pool, backend_for(pool)).connect("fence-test.db")
db.execute("CREATE TABLE IF NOT EXISTS t (x)")
db.execute("INSERT INTO t VALUES (1)")
print(json.dumps({"holder": lock.rados.holder_record(), "vfs": vfs_client()}), flush=True)
sys.stdin.readline()
try:
    db.execute("INSERT INTO t VALUES (2)")
    print("wrote", flush=True)
except Exception as e:
    print("refused:", type(e).__name__, e, flush=True)
"""


def test_takeover_fences_the_backup_catalogs_client_too(ceph_lab: CephLab, rados_location: str,
                                                        host2_client: str, short_dir: Path) -> None:
    """Host A's process holds the pool lock and has the backup catalog (libcephsqlite, a RADOS
    client of its own) open; B's takeover blocklists both clients: A's next catalog commit fails."""
    from radoshosts import RadosHost

    from vstor.store.backend.rados.lock import RadosLock
    host = RadosHost(short_dir / "A", rados_location, str(ceph_lab.conf))  # pool init: A's state directory
    a = subprocess.Popen([sys.executable, "-c", HOST_A, host.pool], env=host.env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    b = open_backend(rados_location, str(ceph_lab.conf), host2_client, timeout=CLIENT_TIMEOUT)
    try:
        seen = json.loads(a.stdout.readline())
        vfs_addr = seen["vfs"]["addr"]
        assert vfs_addr in seen["holder"]["addrs"] and len(seen["holder"]["addrs"]) == 2, seen
        new = RadosLock(b.meta, duration=DURATION, location=rados_location, cluster=b.cluster)
        fenced = new.acquire(takeover=True)
        assert fenced is not None and vfs_addr in fenced["addrs"]
        assert vfs_addr in ceph_lab.ceph("osd", "blocklist", "ls")
        a.stdin.write("\n")
        a.stdin.flush()
        out = a.stdout.readline()
        assert out.startswith("refused:"), out  # the catalog of a fenced owner takes no more commits
        new.release()
    finally:
        a.kill()
        a.wait()
        b.close()
