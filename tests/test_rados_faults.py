"""Faults of the Ceph cluster under a RADOS pool give the host errors, never hangs (issue 29):

* a stopped OSD (SIGSTOP: memstore keeps its data): writes, fsyncs and reads through FUSE get
  EIO within the pool's client timeout (``pool init --rados-timeout``), reads that need no
  cluster are served at once, ``array status`` answers and says the cluster is unreachable; once
  the OSD runs again (SIGCONT) I/O resumes without a restart, and nothing acknowledged is lost;
* a full pool (a quota): ENOSPC, the daemon stays up and says the pool is full; once the quota is
  raised, writes work again;
* a write the client gave up on that the OSD applies later (SIGCONT): never replayed.

Needs the session's Ceph cluster (``make test-rados``); the FUSE tests need root.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cephlab import CLIENT_TIMEOUT, CephLab
from harness import Array, read_direct
from radoshosts import RadosHost

from vstor.errors import Unavailable
from vstor.store.backend.location import open_backend
from vstor.store.check import check_pool
from vstor.store.store import Store
from vstor.store.superblock import Superblock, format_backend

pytestmark = pytest.mark.rados
MiB = 1 << 20
SLACK = 4.0  # seconds past the client timeout a failure may take (FUSE, the CLI's start-up)


def _write(path: str, offset: int, data: bytes) -> tuple[int, float]:
    """pwrite then fsync through FUSE: (0 or the errno the host got, seconds taken)."""
    t0 = time.monotonic()
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
        return 0, time.monotonic() - t0
    except OSError as e:
        return e.errno or -1, time.monotonic() - t0
    finally:
        with contextlib.suppress(OSError):  # the close's flush fails too while the cluster does
            os.close(fd)


def _read(path: str, offset: int, size: int) -> bytes:
    """An O_DIRECT read; the close's flush (a journal sync) may fail during an outage."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, size)
        n = os.preadv(fd, [buf], offset)
        return bytes(buf[:n])
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def _until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout} s")


def _outage(a: Array) -> dict | None:
    return a.status()["journal"]["outage"]


@pytest.mark.root
def test_stopped_osd_gives_eio_within_the_timeout_and_io_resumes(ceph_lab: CephLab, rados_location: str,
                                                                 short_dir: Path) -> None:
    a = RadosHost(short_dir / "h", rados_location, str(ceph_lab.conf), rados_timeout=CLIENT_TIMEOUT)
    osd = 0
    try:
        a.start()
        a.create("v", "16M")
        a.create("w", "16M")
        acked = os.urandom(MiB)
        assert _write(a.image("v"), 0, acked)[0] == 0
        osd = ceph_lab.osd_pid()
        os.kill(osd, signal.SIGSTOP)
        try:
            code, took = _write(a.image("v"), MiB, os.urandom(64 * 1024))
            assert code == errno.EIO and took < CLIENT_TIMEOUT + SLACK, (code, took)
            code, took = _write(a.image("v"), 2 * MiB, b"x" * 4096)  # suspended: refused at once
            assert code == errno.EIO and took < 1.5, (code, took)
            t0 = time.monotonic()
            with pytest.raises(OSError) as e:
                read_direct(a.image("v"), 0, 4096)  # its data is only in the cluster
            assert e.value.errno == errno.EIO and time.monotonic() - t0 < CLIENT_TIMEOUT + SLACK
            t0 = time.monotonic()
            assert _read(a.image("w"), 0, 64 * 1024) == bytes(64 * 1024)  # needs no cluster
            assert os.listdir(os.path.join(a.mnt, "volumes")) and time.monotonic() - t0 < 1.5
            t0 = time.monotonic()
            outage = _outage(a)
            assert outage and outage["kind"] == "unreachable", outage
            assert time.monotonic() - t0 < CLIENT_TIMEOUT + SLACK
            assert "UNREACHABLE" in a.vstor("array", "status").stdout
        finally:
            os.kill(osd, signal.SIGCONT)
        _until(lambda: _outage(a) is None, 30, "resume after SIGCONT")
        later = os.urandom(MiB)
        assert _write(a.image("v"), 4 * MiB, later)[0] == 0
        assert read_direct(a.image("v"), 0, MiB) == acked
        assert read_direct(a.image("v"), MiB, 64 * 1024) == bytes(64 * 1024)  # the failed fsync's write: dropped
        assert a.status()["journal"]["last_resume"]["new_segment"] > 0
        a.stop()
        a.start()  # the same after a restart: nothing acknowledged lost, the dropped write not replayed
        assert read_direct(a.image("v"), 0, MiB) == acked
        assert read_direct(a.image("v"), 4 * MiB, MiB) == later
        assert read_direct(a.image("v"), MiB, 64 * 1024) == bytes(64 * 1024)
        a.stop()
        r = a.vstor("pool", "check", rados_location, check=False)
        assert r.returncode == 0 and "clean" in r.stdout, r.stdout + r.stderr
    finally:
        if osd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(osd, signal.SIGCONT)
        a.cleanup()
    ceph_lab.check_alive()


@pytest.mark.root
def test_full_pool_gives_enospc_the_daemon_stays_up_and_writes_resume(ceph_lab: CephLab, short_dir: Path) -> None:
    name = ceph_lab.pool(f"vstor-full-{uuid.uuid4().hex[:8]}")
    ceph_lab.ceph("config", "set", "mgr", "mgr_stats_period", "1")  # the quota is noticed sooner
    a = None
    try:
        a = RadosHost(short_dir / "h", f"rados://{name}/full", str(ceph_lab.conf), rados_timeout=CLIENT_TIMEOUT)
        a.start()
        a.create("v", "256M")
        ceph_lab.ceph("osd", "pool", "set-quota", name, "max_bytes", str(16 * MiB))
        acked: dict[int, bytes] = {}
        code, off, end = 0, 0, time.monotonic() + 90
        while time.monotonic() < end and off < 200 * MiB:
            data = os.urandom(MiB)
            code, _took = _write(a.image("v"), off, data)
            if code:
                break
            acked[off] = data
            off += MiB
            if off >= 16 * MiB:  # past the quota: the monitor flags the pool full within seconds,
                time.sleep(0.2)  # keep the overshoot small (below it no write can fail: no pause)
        assert code == errno.ENOSPC, (code, off)
        assert acked and a.pid() is not None  # the daemon stays up
        outage = _outage(a)
        assert outage and outage["kind"] == "full", outage
        assert "FULL" in a.vstor("array", "status").stdout
        code, took = _write(a.image("v"), off, b"y" * 4096)
        assert code == errno.ENOSPC and took < 1.5, (code, took)
        ceph_lab.ceph("osd", "pool", "set-quota", name, "max_bytes", "0")  # space freed
        _until(lambda: _outage(a) is None, 60, "writes to resume after the quota was lifted")
        data = os.urandom(MiB)
        assert _write(a.image("v"), off, data)[0] == 0
        acked[off] = data
        for o, d in acked.items():
            assert read_direct(a.image("v"), o, MiB) == d, o
        a.stop()
    finally:
        if a is not None:
            a.cleanup()
        with contextlib.suppress(RuntimeError):
            ceph_lab.ceph("config", "rm", "mgr", "mgr_stats_period")
        ceph_lab.delete_pool(name)
    ceph_lab.check_alive()


def test_a_late_write_after_sigcont_is_never_replayed(ceph_lab: CephLab, rados_location: str,
                                                      tmp_path: Path) -> None:
    conf = str(ceph_lab.conf)
    be = open_backend(rados_location, conf, timeout=CLIENT_TIMEOUT)
    format_backend(be, Superblock(str(uuid.uuid4()), 512 * 1024, 16 * MiB, "none", False, "", "", time.time()))
    be.close()
    state = tmp_path / "state"
    (state / "meta").mkdir(parents=True)
    store = Store.open(str(state), backend=open_backend(rados_location, conf, timeout=CLIENT_TIMEOUT))
    osd = ceph_lab.osd_pid()
    acked, later = os.urandom(256 * 1024), os.urandom(256 * 1024)
    try:
        vid = store.create_volume("v", 16 * MiB).id
        store.write(vid, 0, acked)
        store.sync()
        old, durable = store.journal.durable_position()
        os.kill(osd, signal.SIGSTOP)
        try:
            store.write(vid, 0, os.urandom(256 * 1024))  # sent, into the stopped OSD's socket
            t0 = time.monotonic()
            with pytest.raises(Unavailable):
                store.sync()
            assert time.monotonic() - t0 < CLIENT_TIMEOUT + SLACK
        finally:
            os.kill(osd, signal.SIGCONT)
        # The OSD now applies the write its client gave up on: past the durable position.
        _until(lambda: store.backend.segment_size(old) > durable, 15, "late write")
        report = store.resume_after_outage()
        assert report and report["sealed_segment"] == old and report["sealed_at"] == durable
        assert bytes(store.read(vid, 0, len(acked))) == acked
        store.write(vid, MiB, later)
        store.sync()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(osd, signal.SIGCONT)
        store.close(checkpoint=False)  # the restart replays the sealed segment
    store = Store.open(str(state), backend=open_backend(rados_location, conf, timeout=CLIENT_TIMEOUT))
    try:
        assert not store.recovery["damage"] and store.recovery["torn_tail"] is None, store.recovery
        assert bytes(store.read(vid, 0, len(acked))) == acked
        assert bytes(store.read(vid, MiB, len(later))) == later
        rep = check_pool(store)
        assert rep.clean, rep.problems
    finally:
        store.close(checkpoint=False)
    ceph_lab.check_alive()
