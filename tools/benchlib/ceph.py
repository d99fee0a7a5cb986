"""A throwaway one-node Ceph cluster for benchmarks: BlueStore on a sparse file, 127.0.0.1 only.

``BenchCluster(dir)`` is a Staged resource: entering writes a ceph.conf and per-daemon keyrings
under ``dir``, makes and starts one monitor, one manager and one OSD whose BlueStore block
device is a sparse file (``dir/osd.0/block``, BLOCK_BYTES: it costs only what is written), waits
until the OSD is up and the manager available, and returns the path of ceph.conf. Leaving kills
every daemon it started (by the PID files under ``dir``, only if that PID still runs a daemon with
this ceph.conf) and removes ``dir``, also after an error or a signal.

BlueStore, not memstore: memstore keeps every byte in the OSD's RAM (about twice the data) and
answers without a disk, so its figures say nothing about a real cluster. The bring-up is that of
tests/cephlab.py (which the tools cannot import: it is a pytest fixture module) and of
/work/shared/reference/ceph; the traps it avoids are described there: per-daemon keyrings, no
cluster log under /var/log/ceph, and a PID check because a lone dead OSD still shows "up".
Clients: ``[client] rbd cache = false``, so that librbd acknowledges a write once the OSD has
committed it (see docs/benchmarks.md, "fio on RADOS").
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .procs import BenchError, Staged, alive, best_effort, run, wait_until

__all__ = ["BLOCK_BYTES", "BenchCluster", "ceph_missing"]

BLOCK_BYTES = 40 << 30  # sparse; 4 GiB filled up and aborted the OSD (reference README, failure 3)
PORT_SPAN = 200
DAEMON_COMMANDS = ("ceph-mon", "ceph-mgr", "ceph-osd", "ceph", "ceph-authtool", "monmaptool", "rados", "rbd")

CONF = """[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{port}
public addr = 127.0.0.1
public network = 127.0.0.1/32
cluster network = 127.0.0.1/32
ms bind ipv6 = false
ms bind msgr1 = false
ms bind port min = {port_min}
ms bind port max = {port_max}
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = {d}/keyring
run dir = {d}/run
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log
crash dir = {d}/crash
log to stderr = false
err to stderr = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
mgr initial modules = iostat
mon cluster log to file = false
[client]
rbd cache = false
admin socket =
[mon]
mon data = {d}/mon.$id
[mgr]
mgr data = {d}/mgr.$id
keyring = {d}/mgr.$id/keyring
[osd]
osd data = {d}/osd.$id
keyring = {d}/osd.$id/keyring
osd objectstore = bluestore
osd memory target = 939524096
bluestore block create = true
bluestore block size = {block}
bluestore fsck on mkfs = false
"""


def ceph_missing() -> str | None:
    """Why no cluster can be brought up here, or None."""
    missing = [c for c in DAEMON_COMMANDS if not shutil.which(c)]
    return f"needs the Ceph packages ({', '.join(missing)} missing; make system-deps-rados)" if missing else None


def _free_port() -> int:
    for _ in range(50):
        port = random.randrange(20000, 60000 - PORT_SPAN)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise BenchError("no free port for the Ceph monitor")


class BenchCluster(Staged[Path]):
    def __init__(self, directory: Path, block_bytes: int = BLOCK_BYTES) -> None:
        super().__init__()
        self.dir = Path(directory).resolve()
        self.conf = self.dir / "ceph.conf"
        self.block_bytes = block_bytes
        self.up_seconds = 0.0

    # -- commands --------------------------------------------------------------------------
    def ceph(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        cmd = ["ceph", "-c", str(self.conf), "--connect-timeout", "20", *args]
        if stdin is None:
            return run(cmd, timeout=timeout).stdout
        p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
        if p.returncode:
            raise BenchError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
        return p.stdout

    def env(self) -> dict[str, str]:
        """The environment for librados clients (fio's rbd engine, rados, rbd): CEPH_CONF."""
        return dict(os.environ, CEPH_CONF=str(self.conf))

    # -- bring-up --------------------------------------------------------------------------
    def setup(self) -> Path:
        t0 = time.monotonic()
        d = self.dir
        d.mkdir(parents=True)
        self.stack.callback(best_effort(f"tear down the Ceph cluster in {d}", self._down))
        for sub in ("run", "log", "crash", "mon.a", "mgr.x"):
            (d / sub).mkdir()
        port, fsid = _free_port(), str(uuid.uuid4())
        self.conf.write_text(CONF.format(fsid=fsid, port=port, port_min=port + 1, port_max=port + PORT_SPAN,
                                         d=d, block=self.block_bytes))
        k, c = str(d / "keyring"), str(self.conf)
        run(["ceph-authtool", "--create-keyring", k, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"])
        run(["ceph-authtool", k, "--gen-key", "-n", "client.admin", "--cap", "mon", "allow *",
             "--cap", "osd", "allow *", "--cap", "mgr", "allow *", "--cap", "mds", "allow *"])
        run(["ceph-authtool", k, "--gen-key", "-n", "mgr.x", "--cap", "mon", "allow profile mgr",
             "--cap", "osd", "allow *", "--cap", "mds", "allow *"])
        run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{port}]", str(d / "monmap")])
        run(["ceph-mon", "-c", c, "-i", "a", "--mkfs", "--monmap", str(d / "monmap"), "--keyring", k])
        run(["ceph-mon", "-c", c, "-i", "a"])
        mgr_key = run(["ceph-authtool", k, "-n", "mgr.x", "-p"]).stdout.strip()
        run(["ceph-authtool", "--create-keyring", str(d / "mgr.x" / "keyring"), "--name", "mgr.x",
             "--add-key", mgr_key])
        run(["ceph-mgr", "-c", c, "-i", "x"])
        osd_uuid, osd_key = str(uuid.uuid4()), run(["ceph-authtool", "--gen-print-key"]).stdout.strip()
        osd_id = int(self.ceph("osd", "new", osd_uuid, "-i", "-", stdin=json.dumps({"cephx_secret": osd_key})).strip())
        osd_dir = d / f"osd.{osd_id}"
        osd_dir.mkdir(exist_ok=True)
        run(["ceph-authtool", "--create-keyring", str(osd_dir / "keyring"), "--name", f"osd.{osd_id}",
             "--add-key", osd_key])
        run(["ceph-osd", "-c", c, "-i", str(osd_id), "--mkfs", "--osd-uuid", osd_uuid], timeout=180)
        run(["ceph-osd", "-c", c, "-i", str(osd_id)])
        self._wait(lambda s: s["osdmap"]["num_up_osds"] >= 1 and s["osdmap"]["num_in_osds"] >= 1
                   and s.get("mgrmap", {}).get("available", False), 120, "the OSD up and the manager available")
        self.up_seconds = round(time.monotonic() - t0, 1)
        return self.conf

    def pool(self, name: str, application: str) -> str:
        """A fresh replicated size-1 pool of 8 PGs, once its PGs are active+clean."""
        self.ceph("osd", "pool", "create", name, "8", "8")
        self.ceph("osd", "pool", "application", "enable", name, application)
        self._wait(lambda s: all(x["state_name"] == "active+clean" for x in s["pgmap"].get("pgs_by_state", [])),
                   60, f"active+clean PGs in pool {name}")
        return name

    def _wait(self, ready: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < end:
            self.check_alive()
            try:
                s = json.loads(self.ceph("status", "-f", "json"))
                if ready(s):
                    return
                last = s.get("health", {}).get("status")
            except (BenchError, ValueError, KeyError) as e:
                last = e
            time.sleep(0.25)
        raise BenchError(f"Ceph cluster in {self.dir}: no {what} after {timeout:.0f} s (last: {last})")

    # -- daemons ---------------------------------------------------------------------------
    def pids(self) -> dict[str, int]:
        """Daemon name -> PID, for each PID file whose process still runs our ceph.conf."""
        out = {}
        for f in sorted((self.dir / "run").glob("*.pid")):
            with contextlib.suppress(OSError, ValueError):
                pid = int(f.read_text().strip())
                if str(self.conf).encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") and alive(pid):
                    out[f.stem] = pid
        return out

    def check_alive(self) -> None:
        """BenchError if a daemon this cluster started has died (a lone dead OSD still looks 'up')."""
        dead = {f.stem for f in (self.dir / "run").glob("*.pid")} - set(self.pids())
        if dead:
            raise BenchError(f"Ceph daemon(s) {', '.join(sorted(dead))} died; see {self.dir}/log")

    def _down(self) -> None:
        """SIGKILL every daemon (the cluster and its data are thrown away), wait, remove the directory."""
        pids = list(self.pids().values()) if (self.dir / "run").exists() else []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(alive(p) for p in pids), 15)
        left = [p for p in pids if alive(p)]
        shutil.rmtree(self.dir, ignore_errors=True)
        if left:
            raise BenchError(f"Ceph daemons {left} still run after SIGKILL")
