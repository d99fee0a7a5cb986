"""A throwaway one-node Ceph cluster for the RADOS tests (memstore, 127.0.0.1 only).

``CephLab(dir).up()`` writes a ceph.conf and per-daemon keyrings under ``dir``, makes and
starts one monitor, one manager and one OSD (memstore: data in RAM, capped by
MEMSTORE_BYTES), and waits until the OSD is up and in and the manager is available.
``pool(name)`` makes a replicated size-1 pool and waits for its PGs to be active+clean.
``down()`` kills every daemon it started, by the PID files under ``dir`` and only if that PID
still runs a ceph daemon with our ceph.conf (PID reuse), then removes ``dir``.

The traps it avoids (../shared/reference/ceph/README.md): the OSD and manager need their
own keyring ([osd]/[mgr] ``keyring``), or the OSD's mkfs fails to authenticate; without
``mon cluster log to file = false`` the monitor writes under /var/log/ceph; a single OSD
that dies stays "up" for 15 minutes (no peer reports it), so clients get
``rados_osd_op_timeout`` (CLIENT_TIMEOUT) and :meth:`check_alive` looks at the PIDs, not
at ``ceph health``.
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
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["CLIENT_TIMEOUT", "TEST_POOL", "CephLab", "ceph_available", "ceph_lab", "rados_location"]

DAEMONS = ("ceph-mon", "ceph-mgr", "ceph-osd")
CLIENT_TIMEOUT = 3  # seconds: rados_osd_op_timeout and client_mount_timeout of test clients
MEMSTORE_BYTES = 2 << 30
PORT_SPAN = 200  # the OSD and manager bind in [port + 1, port + PORT_SPAN]


def ceph_available() -> str | None:
    """Why the RADOS tests cannot run here, or None."""
    missing = [c for c in (*DAEMONS, "ceph", "ceph-authtool", "monmaptool") if not shutil.which(c)]
    if missing:
        return f"needs the Ceph packages ({', '.join(missing)} missing; 'make setup')"
    try:
        import rados  # noqa: F401
    except ImportError:
        return "needs python3-rados: run the tests with .venv-rados/bin/python ('make test-rados')"
    return None


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
    raise RuntimeError("no free port for the Ceph monitor")


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
[mon]
mon data = {d}/mon.$id
[mgr]
mgr data = {d}/mgr.$id
keyring = {d}/mgr.$id/keyring
[osd]
osd data = {d}/osd.$id
keyring = {d}/osd.$id/keyring
osd objectstore = memstore
osd memory target = 939524096
memstore device bytes = {memstore}
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` is still a live process (a zombie left to an init that does not reap is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class CephLab:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory).resolve()
        self.conf = self.dir / "ceph.conf"
        self.keyring = self.dir / "keyring"
        self.osd_id = 0

    # -- commands --------------------------------------------------------------------------
    def _run(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        p = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
        return p.stdout

    def ceph(self, *args: str, stdin: str | None = None) -> str:
        return self._run("ceph", "-c", str(self.conf), "--connect-timeout", "20", *args, stdin=stdin)

    # -- bring-up --------------------------------------------------------------------------
    def up(self, timeout: float = 90) -> CephLab:
        d = self.dir
        for sub in ("run", "log", "crash", "mon.a", "mgr.x", "osd.0"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        port, fsid = _free_port(), str(uuid.uuid4())
        self.conf.write_text(CONF.format(fsid=fsid, port=port, port_min=port + 1, port_max=port + PORT_SPAN,
                                         d=d, memstore=MEMSTORE_BYTES))
        k = str(self.keyring)
        self._run("ceph-authtool", "--create-keyring", k, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
        self._run("ceph-authtool", k, "--gen-key", "-n", "client.admin", "--cap", "mon", "allow *",
                  "--cap", "osd", "allow *", "--cap", "mgr", "allow *", "--cap", "mds", "allow *")
        self._run("ceph-authtool", k, "--gen-key", "-n", "mgr.x", "--cap", "mon", "allow profile mgr",
                  "--cap", "osd", "allow *", "--cap", "mds", "allow *")
        self._run("monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{port}]", str(d / "monmap"))
        c = str(self.conf)
        self._run("ceph-mon", "-c", c, "-i", "a", "--mkfs", "--monmap", str(d / "monmap"), "--keyring", k)
        self._run("ceph-mon", "-c", c, "-i", "a")
        mgr_key = self._run("ceph-authtool", k, "-n", "mgr.x", "-p").strip()
        self._run("ceph-authtool", "--create-keyring", str(d / "mgr.x" / "keyring"), "--name", "mgr.x",
                  "--add-key", mgr_key)
        self._run("ceph-mgr", "-c", c, "-i", "x")
        osd_uuid, osd_key = str(uuid.uuid4()), self._run("ceph-authtool", "--gen-print-key").strip()
        self.osd_id = int(self.ceph("osd", "new", osd_uuid, "-i", "-",
                                    stdin=json.dumps({"cephx_secret": osd_key})).strip())
        osd_dir = d / f"osd.{self.osd_id}"
        osd_dir.mkdir(exist_ok=True)
        self._run("ceph-authtool", "--create-keyring", str(osd_dir / "keyring"), "--name", f"osd.{self.osd_id}",
                  "--add-key", osd_key)
        self._run("ceph-osd", "-c", c, "-i", str(self.osd_id), "--mkfs", "--osd-uuid", osd_uuid)
        self._run("ceph-osd", "-c", c, "-i", str(self.osd_id))
        self._wait(lambda s: s["osdmap"]["num_up_osds"] >= 1 and s["osdmap"]["num_in_osds"] >= 1
                   and s.get("mgrmap", {}).get("available", False), timeout, "the OSD up and the manager available")
        return self

    def _status(self) -> dict:
        return json.loads(self.ceph("status", "-f", "json"))

    def _wait(self, ready, timeout: float, what: str) -> None:  # noqa: ANN001
        end = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < end:
            self.check_alive()
            try:
                s = self._status()
                if ready(s):
                    return
                last = s.get("health", {}).get("status")
            except (RuntimeError, ValueError, KeyError) as e:
                last = e
            time.sleep(0.25)
        raise RuntimeError(f"Ceph test cluster in {self.dir}: no {what} after {timeout} s (last: {last})")

    def pool(self, name: str, timeout: float = 60) -> str:
        """A fresh pool; waits until all its PGs are active+clean."""
        self.ceph("osd", "pool", "create", name, "8", "8")
        self.ceph("osd", "pool", "application", "enable", name, "rados")
        self._wait(lambda s: all(x["state_name"] == "active+clean" for x in s["pgmap"].get("pgs_by_state", [])),
                   timeout, f"active+clean PGs in pool {name}")
        return name

    def delete_pool(self, name: str) -> None:
        self.ceph("osd", "pool", "delete", name, name, "--yes-i-really-really-mean-it")

    # -- daemons ---------------------------------------------------------------------------
    def pids(self) -> dict[str, int]:
        """Daemon name -> PID, for each PID file whose process still runs our ceph.conf."""
        out = {}
        for f in sorted((self.dir / "run").glob("*.pid")):
            with contextlib.suppress(OSError, ValueError):
                pid = int(f.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if str(self.conf).encode() in cmdline:
                    out[f.stem] = pid
        return out

    def check_alive(self) -> None:
        """RuntimeError if a daemon this lab started has died (a dead single OSD looks 'up' to the mon)."""
        started = {f.stem for f in (self.dir / "run").glob("*.pid")}
        dead = started - set(self.pids())
        if dead:
            raise RuntimeError(f"Ceph daemon(s) {', '.join(sorted(dead))} died; see {self.dir}/log")

    def osd_pid(self) -> int:
        return self.pids()[f"osd.{self.osd_id}"]

    def down(self) -> list[int]:
        """Kill every daemon of this lab, wait for them to be gone, remove the directory.
        Returns the PIDs killed. SIGKILL: the cluster and its data are thrown away."""
        pids = list(self.pids().values()) if self.dir.exists() else []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a test may have stopped one
                os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 10
        while time.monotonic() < end and any(_running(p) for p in pids):
            time.sleep(0.05)
        left = [p for p in pids if _running(p)]
        shutil.rmtree(self.dir, ignore_errors=True)
        if left:
            raise RuntimeError(f"Ceph daemons {left} still run after SIGKILL")
        return pids


# -- pytest fixtures (imported by conftest.py) ------------------------------------------------
TEST_POOL = "vstor-test"


@pytest.fixture(scope="session")
def ceph_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephLab]:
    """One cluster for the whole session, with the RADOS pool TEST_POOL; torn down at the end,
    also when a test or the bring-up itself fails."""
    why = ceph_available()
    if why:
        pytest.skip(why)
    lab = CephLab(tmp_path_factory.mktemp("ceph") / "cluster")
    try:
        lab.up()
        lab.pool(TEST_POOL)
        yield lab
    finally:
        lab.down()


@pytest.fixture
def rados_location(ceph_lab: CephLab) -> Iterator[str]:
    """A fresh rados://TEST_POOL/PREFIX for one test (its own RADOS namespaces); every object
    under it is removed afterwards."""
    import rados
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    yield f"rados://{TEST_POOL}/{prefix}"
    cluster = rados.Rados(conffile=str(ceph_lab.conf), conf={"rados_osd_op_timeout": str(CLIENT_TIMEOUT)})
    cluster.connect(timeout=CLIENT_TIMEOUT)
    try:
        with cluster.open_ioctx(TEST_POOL) as io:
            for ns in (prefix, f"{prefix}/journal"):
                io.set_namespace(ns)
                for obj in list(io.list_objects()):
                    io.remove_object(obj.key)
    finally:
        cluster.shutdown()
