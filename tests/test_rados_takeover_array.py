"""Failover of an array on RADOS between two "hosts" (two state directories, two daemon
processes, two RADOS clients under two Ceph users; tests/radoshosts.py):

* a live owner is fenced by ``array start --takeover`` on the other host: a write + fsync
  through its FUSE mount fails, its status says fenced, it never takes the pool back by
  itself, and what the new owner serves (also after a restart) never shows that write; each
  takeover is in daemon.log and in the pool's audit log (a state file in the cluster);
* kill -9 of the owner during a write+fsync workload, then ``--takeover`` on the other host
  (the dead owner's lock has not expired: it is fenced, not waited for): every acknowledged
  write is there.

Needs root (FUSE) and the session's Ceph cluster (``make test-rados``)."""

from __future__ import annotations

import errno
import os
import random
import time
from pathlib import Path

import pytest
from cephlab import CephLab
from harness import one_error_line, read_direct
from radoshosts import RadosHost
from test_crash import _verify, _workload

pytestmark = [pytest.mark.root, pytest.mark.rados]
MiB = 1 << 20
LOCK_SECONDS = 6  # renewals every 2 s: the fenced owner's notices soon, a busy machine still renews in time


def _write_fsync(image: str, data: bytes, offset: int) -> None:
    fd = os.open(image, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _daemon_log(host: RadosHost) -> str:
    return (Path(host.pool) / "log" / "daemon.log").read_text()


def _failed(host: RadosHost) -> str:
    return host.status()["journal"]["failed"] or ""


def test_takeover_fences_the_live_owner_for_good(ceph_lab: CephLab, rados_location: str, host2_client: str,
                                                 short_dir: Path) -> None:
    conf = str(ceph_lab.conf)
    a = RadosHost(short_dir / "A", rados_location, conf, lock_seconds=LOCK_SECONDS)
    b = None
    try:
        a.start()
        a.create("v", "16M")
        kept = os.urandom(MiB)
        _write_fsync(a.image("v"), kept, 0)
        b = RadosHost(short_dir / "B", rados_location, conf, attach=True, ceph_id=host2_client,
                      lock_seconds=LOCK_SECONDS)
        line = one_error_line(b.start(check=False), "start while A owns it")
        assert "owned by vstor daemon" in line and "--takeover" in line, line
        b.start(args=["--takeover"])
        assert read_direct(b.image("v"), 0, MiB) == kept
        assert "takeover of " + rados_location in _daemon_log(b)
        take = [en for en in b.vstor_json("audit", "log") if en["action"] == "array.takeover"]
        assert len(take) == 1 and take[0]["details"]["fenced"]["client"].startswith("client."), take  # in the cluster

        lost = os.urandom(MiB)
        with pytest.raises(OSError) as e:  # the write may be cached by the kernel; fsync cannot be
            _write_fsync(a.image("v"), lost, 0)
        assert e.value.errno == errno.EIO, e.value
        deadline = time.monotonic() + LOCK_SECONDS + 5
        while "fenced" not in _failed(a):
            assert time.monotonic() < deadline, f"A's status never said fenced: {_failed(a)!r}"
            time.sleep(0.1)
        assert "fenced" in a.vstor("array", "status").stdout
        assert read_direct(b.image("v"), 0, MiB) == kept

        b.stop()  # the lock is free: A, still running, must not take it back by itself
        time.sleep(LOCK_SECONDS / 3 * 2)  # two of A's renewal periods
        with pytest.raises(OSError):
            _write_fsync(a.image("v"), lost, 0)
        b.start()  # no --takeover needed: nobody holds the lock
        assert read_direct(b.image("v"), 0, MiB) == kept  # replayed again: A's write is not there

        r = a.vstor("array", "stop", check=False)  # the fenced daemon stops, saying it had failed
        assert r.returncode != 0 and "fenced" in r.stderr, r.stderr
        a.start(args=["--takeover"])  # back to A: the second takeover is in the same audit log
        assert read_direct(a.image("v"), 0, MiB) == kept
        take = [en for en in a.vstor_json("audit", "log") if en["action"] == "array.takeover"]
        assert len(take) == 2 and take[1]["details"]["host"] == take[0]["details"]["host"], take
        assert a.vstor_json("audit", "verify")["intact"]
        a.stop()
    finally:
        a.cleanup()
        if b is not None:
            b.cleanup()


def test_kill9_then_takeover_on_another_host_keeps_every_acknowledged_write(
        ceph_lab: CephLab, rados_location: str, host2_client: str, short_dir: Path, tmp_path: Path) -> None:
    conf = str(ceph_lab.conf)
    a = RadosHost(short_dir / "A", rados_location, conf)  # the default 30 s lock: a takeover must fence
    b = None
    rnd = random.Random(29)
    log = tmp_path / "acks.log"
    try:
        a.start()
        a.create("v", "16M")
        wl = _workload(a.image("v"), log, 3, seconds=60, fsync_every=rnd.choice([1, 4]))
        deadline = time.monotonic() + 60
        while not log.exists() or log.read_text().count("K ") < 60:
            assert wl.poll() is None and time.monotonic() < deadline, "the workload acknowledged too little"
            time.sleep(0.05)
        time.sleep(rnd.uniform(0, 0.3))
        a.kill9()
        wl.wait(timeout=60)
        b = RadosHost(short_dir / "B", rados_location, conf, attach=True, ceph_id=host2_client)
        started = time.monotonic()
        b.start(args=["--takeover"])
        assert time.monotonic() - started < 25, "the takeover waited for the lock to expire"
        st = b.status()
        assert st["journal"]["failed"] is None and st["recovery"]["records"] > 0, st["recovery"]
        assert _verify(b.image("v"), log, 3) > 0
        b.stop()
        r = b.vstor("pool", "check", rados_location, check=False)
        assert r.returncode == 0 and "clean" in r.stdout, r.stdout + r.stderr
    finally:
        a.cleanup()
        if b is not None:
            b.cleanup()
