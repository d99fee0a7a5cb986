"""A throwaway one-node Ceph cluster on 127.0.0.1: one monitor, one manager, one OSD.

The one bring-up shared by the RADOS tests (tests/cephlab.py: ``store="memstore"``, data in the
OSD's RAM, fast, gone when the OSD dies) and the RADOS benchmark (tools/benchlib/ceph.py:
``store="bluestore"``, the OSD's block device a sparse file that costs only what is written; its
figures mean something for a real cluster, memstore's do not).

``Cluster(dir, store).up()`` writes a ceph.conf and per-daemon keyrings under ``dir``, makes and
starts the three daemons, and waits until the OSD is up and in and the manager available.
``pool(name)`` makes a replicated size-1 pool of 8 PGs and waits until all its PGs are
active+clean. ``down()`` kills every daemon it started, by the PID files under ``dir`` and only if
that PID still runs a daemon with this ceph.conf (PID reuse), then removes ``dir``. Errors are
:class:`CephError` (a RuntimeError).

The traps it avoids (../shared/reference/ceph/README.md): the OSD and manager need their own
keyring ([osd]/[mgr] ``keyring``), or the OSD's mkfs fails to authenticate; without ``mon cluster
log to file = false`` the monitor writes under /var/log/ceph; a single OSD that dies stays "up"
for 15 minutes (no peer reports it), so :meth:`Cluster.check_alive` looks at the PIDs, not at
``ceph health``. The waits poll ``status`` through one librados connection when python3-rados is
importable (a ``ceph`` command costs a Python start-up, ~0.25 s of CPU, each), and the manager
reports PG states to the monitor every second (``mon mgr digest period``, default 5 s: a new pool
showed active+clean 4-8 s after it was, on a lone OSD that peers it in well under a second).
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

__all__ = ["BLOCK_BYTES", "MEMSTORE_BYTES", "STORES", "CephError", "Cluster", "ceph_missing"]

DAEMONS = ("ceph-mon", "ceph-mgr", "ceph-osd")
COMMANDS = (*DAEMONS, "ceph", "ceph-authtool", "monmaptool")
STORES = ("memstore", "bluestore")
MEMSTORE_BYTES = 2 << 30  # the cap on what memstore keeps in RAM
BLOCK_BYTES = 40 << 30  # bluestore: sparse; 4 GiB filled up and aborted the OSD (reference README, failure 3)
PORT_SPAN = 200  # the OSD and manager bind in [port + 1, port + PORT_SPAN]
POLL = 0.1  # seconds between status polls

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
mon mgr digest period = 1
mgr stats period = 1
mgr tick period = 1
paxos propose interval = 0.1
mgr initial modules = iostat
mon cluster log to file = false
{client}[mon]
mon data = {d}/mon.$id
[mgr]
mgr data = {d}/mgr.$id
keyring = {d}/mgr.$id/keyring
[osd]
osd data = {d}/osd.$id
keyring = {d}/osd.$id/keyring
osd objectstore = {store}
osd memory target = 939524096
{store_conf}"""

STORE_CONF = {
    "memstore": "memstore device bytes = {memstore}\n",
    "bluestore": "bluestore block create = true\nbluestore block size = {block}\nbluestore fsck on mkfs = false\n",
}


class CephError(RuntimeError):
    """The cluster could not be brought up, a command failed, or a daemon died."""


def ceph_missing(also: tuple[str, ...] = ()) -> str | None:
    """Why no cluster can be brought up here (which Ceph commands, and of ``also``, are
    missing), or None."""
    missing = [c for c in (*COMMANDS, *also) if not shutil.which(c)]
    return f"needs the Ceph packages ({', '.join(missing)} missing; make system-deps-rados)" if missing else None


def _free_port() -> int:
    """A mon port that is free now, with a range above it that is likely free too."""
    for _ in range(50):
        port = random.randrange(20000, 60000 - PORT_SPAN)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise CephError("no free port for the Ceph monitor")


def running(pid: int) -> bool:
    """Whether ``pid`` is still a live process (a zombie left to an init that does not reap is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Cluster:
    """One monitor (a), one manager (x) and one OSD on ``store`` under ``directory``.
    ``client_conf``: extra lines of a [client] section (the benchmark's ``rbd cache = false``)."""

    def __init__(self, directory: Path, store: str = "memstore", *, memstore_bytes: int = MEMSTORE_BYTES,
                 block_bytes: int = BLOCK_BYTES, client_conf: str = "") -> None:
        if store not in STORES:
            raise ValueError(f"store must be one of {', '.join(STORES)}, not {store!r}")
        self.dir = Path(directory).resolve()
        self.conf = self.dir / "ceph.conf"
        self.keyring = self.dir / "keyring"
        self.store, self.memstore_bytes, self.block_bytes = store, memstore_bytes, block_bytes
        self.client_conf = client_conf
        self.osd_id = 0
        self.up_seconds = 0.0
        self._client: Any = None  # a rados.Rados for the status polls, once connected

    # -- commands --------------------------------------------------------------------------
    def run(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        """Run a Ceph command line; its stdout, or CephError with the end of its stderr."""
        try:
            p = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise CephError(f"{' '.join(args)}: no answer after {timeout:.0f} s") from e
        if p.returncode != 0:
            raise CephError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
        return p.stdout

    def ceph(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        return self.run("ceph", "-c", str(self.conf), "--connect-timeout", "20", *args, stdin=stdin, timeout=timeout)

    def env(self) -> dict[str, str]:
        """The environment for librados clients (fio's rbd engine, rados, rbd): CEPH_CONF."""
        return dict(os.environ, CEPH_CONF=str(self.conf))

    # -- bring-up --------------------------------------------------------------------------
    def up(self, timeout: float = 90) -> Cluster:
        t0 = time.monotonic()
        d = self.dir
        for sub in ("run", "log", "crash", "mon.a", "mgr.x"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        port, fsid = _free_port(), str(uuid.uuid4())
        self.conf.write_text(self.render_conf(port, fsid))
        k, c = str(self.keyring), str(self.conf)
        self.run("ceph-authtool", "--create-keyring", k, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
        self.run("ceph-authtool", k, "--gen-key", "-n", "client.admin", "--cap", "mon", "allow *",
                 "--cap", "osd", "allow *", "--cap", "mgr", "allow *", "--cap", "mds", "allow *")
        self.run("ceph-authtool", k, "--gen-key", "-n", "mgr.x", "--cap", "mon", "allow profile mgr",
                 "--cap", "osd", "allow *", "--cap", "mds", "allow *")
        self.run("monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{port}]", str(d / "monmap"))
        self.run("ceph-mon", "-c", c, "-i", "a", "--mkfs", "--monmap", str(d / "monmap"), "--keyring", k)
        self.run("ceph-mon", "-c", c, "-i", "a")
        mgr_key = self.run("ceph-authtool", k, "-n", "mgr.x", "-p").strip()
        self.run("ceph-authtool", "--create-keyring", str(d / "mgr.x" / "keyring"), "--name", "mgr.x",
                 "--add-key", mgr_key)
        self.run("ceph-mgr", "-c", c, "-i", "x")
        osd_uuid, osd_key = str(uuid.uuid4()), self.run("ceph-authtool", "--gen-print-key").strip()
        self.osd_id = int(self.ceph("osd", "new", osd_uuid, "-i", "-", stdin=json.dumps({"cephx_secret": osd_key})))
        osd_dir = d / f"osd.{self.osd_id}"
        osd_dir.mkdir(exist_ok=True)
        self.run("ceph-authtool", "--create-keyring", str(osd_dir / "keyring"), "--name", f"osd.{self.osd_id}",
                 "--add-key", osd_key)
        self.run("ceph-osd", "-c", c, "-i", str(self.osd_id), "--mkfs", "--osd-uuid", osd_uuid, timeout=180)
        self.run("ceph-osd", "-c", c, "-i", str(self.osd_id))
        self._wait(lambda s: s["osdmap"]["num_up_osds"] >= 1 and s["osdmap"]["num_in_osds"] >= 1
                   and s.get("mgrmap", {}).get("available", False), timeout, "the OSD up and the manager available")
        self.up_seconds = round(time.monotonic() - t0, 1)
        return self

    def render_conf(self, port: int, fsid: str) -> str:
        """The ceph.conf of this cluster, its monitor on 127.0.0.1:``port``."""
        client = f"[client]\n{self.client_conf.strip()}\n" if self.client_conf.strip() else ""
        store_conf = STORE_CONF[self.store].format(memstore=self.memstore_bytes, block=self.block_bytes)
        return CONF.format(fsid=fsid, port=port, port_min=port + 1, port_max=port + PORT_SPAN, d=self.dir,
                           client=client, store=self.store, store_conf=store_conf)

    def pool(self, name: str, application: str = "rados", timeout: float = 60) -> str:
        """A fresh replicated size-1 pool of 8 PGs, once all the cluster's PGs (its own
        included: the count must have grown by 8) are active+clean."""
        self.ceph("osd", "pool", "create", name, "8", "8")
        self.ceph("osd", "pool", "application", "enable", name, application)
        pgs = sum(p["pg_num"] for p in json.loads(self.ceph("osd", "pool", "ls", "detail", "-f", "json")))

        def ready(s: dict[str, Any]) -> bool:
            states = s["pgmap"].get("pgs_by_state", [])
            return (sum(x["count"] for x in states) >= pgs
                    and all(x["state_name"] == "active+clean" for x in states))
        self._wait(ready, timeout, f"active+clean PGs in pool {name}")
        return name

    def delete_pool(self, name: str) -> None:
        self.ceph("osd", "pool", "delete", name, name, "--yes-i-really-really-mean-it")

    def status(self) -> dict[str, Any]:
        """``ceph status`` as a dict: through the librados connection when python3-rados is there."""
        client = self._status_client()
        if client is None:
            return json.loads(self.ceph("status", "-f", "json"))
        rc, out, err = client.mon_command(json.dumps({"prefix": "status", "format": "json"}), b"", timeout=10)
        if rc != 0:
            raise CephError(f"status: {err or rc}")
        return json.loads(out)

    def _status_client(self) -> Any:
        if self._client is None:
            try:
                import rados
            except ImportError:
                return None
            client = rados.Rados(conffile=str(self.conf), conf={"client_mount_timeout": "20"})
            try:
                client.connect(timeout=20)
            except rados.Error as e:
                raise CephError(f"connect to the cluster in {self.dir}: {e}") from e
            self._client = client
        return self._client

    def _wait(self, ready: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < end:
            self.check_alive()
            try:
                s = self.status()
                if ready(s):
                    return
                last = s.get("health", {}).get("status")
            except (CephError, ValueError, KeyError) as e:
                last = e
            time.sleep(POLL)
        raise CephError(f"Ceph cluster in {self.dir}: no {what} after {timeout:.0f} s (last: {last})")

    # -- daemons ---------------------------------------------------------------------------
    def pids(self) -> dict[str, int]:
        """Daemon name -> PID, for each PID file whose process still runs our ceph.conf."""
        out = {}
        for f in sorted((self.dir / "run").glob("*.pid")):
            with contextlib.suppress(OSError, ValueError):
                pid = int(f.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if str(self.conf).encode() in cmdline and running(pid):
                    out[f.stem] = pid
        return out

    def check_alive(self) -> None:
        """CephError if a daemon this cluster started has died (a dead single OSD looks 'up' to the mon)."""
        started = {f.stem for f in (self.dir / "run").glob("*.pid")}
        dead = started - set(self.pids())
        if dead:
            raise CephError(f"Ceph daemon(s) {', '.join(sorted(dead))} died; see {self.dir}/log")

    def osd_pid(self) -> int:
        return self.pids()[f"osd.{self.osd_id}"]

    def down(self) -> list[int]:
        """Kill every daemon of this cluster, wait for them to be gone, remove the directory.
        Returns the PIDs killed. SIGKILL: the cluster and its data are thrown away."""
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                client.shutdown()
        pids = list(self.pids().values()) if (self.dir / "run").exists() else []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a test may have stopped one
                os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 15
        while time.monotonic() < end and any(running(p) for p in pids):
            time.sleep(0.05)
        left = [p for p in pids if running(p)]
        shutil.rmtree(self.dir, ignore_errors=True)
        if left:
            raise CephError(f"Ceph daemons {left} still run after SIGKILL")
        return pids
