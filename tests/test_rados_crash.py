"""Crash consistency on RADOS: a process writing and syncing through a Store whose segments
are RADOS objects (many aio writes in flight) is killed with SIGKILL at a random moment; a
new process (a new RADOS client) recovers the pool, and every write a sync acknowledged is
there. Needs the session's Ceph cluster (``make test-rados``)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from cephlab import CLIENT_TIMEOUT, CephLab
from crash_workload import payload, slot_size

from vstor.store.backend.location import open_backend
from vstor.store.check import check_pool
from vstor.store.store import Store
from vstor.store.superblock import Superblock, format_backend, load_superblock_from

pytestmark = pytest.mark.rados
HERE = Path(__file__).parent
SLOTS, SLOT_BYTES, SEED = 48, 256 * 1024, 7
MiB = 1 << 20


def _wait_acks(log: Path, more_than: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, f"the writer exited with {proc.returncode}"
        if log.exists() and log.read_text().count("K ") > more_than:
            return
        time.sleep(0.05)
    raise AssertionError("the writer acknowledged nothing in time")


def _verify(store: Store, log: Path) -> int:
    acked: dict[int, int] = {}
    attempted: dict[int, set[int]] = {}
    for line in log.read_text().splitlines():
        kind, s, v = line.split()
        (attempted.setdefault(int(s), set()).add(int(v)) if kind == "A"
         else acked.__setitem__(int(s), max(acked.get(int(s), 0), int(v))))
    vid = store.volume("v").id
    for s, v in acked.items():
        size = slot_size(SEED, s, SLOT_BYTES)
        got = store.read(vid, s * SLOT_BYTES, size)
        ok = [ver for ver in attempted[s] if ver >= v]
        assert any(got == payload(SEED, s, ver, size) for ver in ok), \
            f"slot {s}: acknowledged version {v} lost (candidates {sorted(ok)})"
    return len(acked)


def test_sigkill_while_writing_to_rados_loses_no_acknowledged_write(ceph_lab: CephLab, rados_location: str,
                                                                    tmp_path: Path) -> None:
    conf = str(ceph_lab.conf)
    be = open_backend(rados_location, conf, timeout=CLIENT_TIMEOUT)
    format_backend(be, Superblock(str(uuid.uuid4()), 512 * 1024, 16 * MiB, "lz4", False, "", "", time.time()))
    be.close()
    state = tmp_path / "state"
    (state / "meta").mkdir(parents=True)
    log = tmp_path / "acks.log"
    rnd = random.Random(29)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
    for i in range(4):
        acks = log.read_text().count("K ") if log.exists() else 0
        proc = subprocess.Popen([sys.executable, str(HERE / "rados_crash_writer.py"), rados_location, conf,
                                 str(state), str(log), "--seed", str(SEED), "--slots", str(SLOTS),
                                 "--slot-bytes", str(SLOT_BYTES), "--sync-every", str(rnd.choice([1, 4, 16]))],
                                env=env)
        try:
            _wait_acks(log, acks + 40, proc)
            time.sleep(rnd.uniform(0, 0.3))  # somewhere in the middle of writes and syncs
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        store = Store.open(str(state), backend=open_backend(rados_location, conf, timeout=CLIENT_TIMEOUT))
        try:
            assert store.journal.failed is None
            assert store.recovery["records"] > 0, store.recovery  # the kill left records to replay
            assert _verify(store, log) > 0
        finally:
            store.close(checkpoint=i % 2 == 0)  # sometimes the next start replays from further back
    be = open_backend(rados_location, conf, timeout=CLIENT_TIMEOUT)
    probe = Store(str(state), load_superblock_from(be), None, backend=be)
    try:
        rep = check_pool(probe)
        assert rep.clean, rep.problems
    finally:
        probe.close(checkpoint=False)
