"""A private PostgreSQL cluster for one benchmark pass, and pgbench against it.

The cluster lives in a directory of the filesystem under test, listens on a unix socket only
(in its own temporary directory, no TCP port), and runs as the ``postgres`` user, as
PostgreSQL refuses root. ``PgCluster`` is a context manager: leaving stops the server
(``pg_ctl stop -m immediate``, then SIGKILL of the postmaster if that fails), also after an
error or Ctrl-C. The parsing of pgbench's report is pure, so it is tested without a server.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import tempfile
from pathlib import Path

from .procs import BenchError, Staged, best_effort, run, signals_deferred, stop_process

__all__ = ["PG_USER", "PgCluster", "pg_bindir", "parse_tps"]

PG_USER = "postgres"
PORT = 5432  # only names the socket file; the socket lives in the cluster's own directory


def pg_bindir() -> Path:
    """The newest Debian PostgreSQL's bin directory (apt's postgresql), else where initdb is."""
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                  if p.parent.name.isdigit() else 0)
    if dirs and (dirs[-1] / "pgbench").exists():
        return dirs[-1]
    found = shutil.which("initdb")
    if found is None:
        raise BenchError("PostgreSQL not found: apt-get install postgresql (make setup)")
    return Path(found).resolve().parent


_TPS = re.compile(r"^tps = ([0-9.]+) \((without initial connection time|excluding connections establishing)\)",
                  re.MULTILINE)
_LAT = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)
_TX = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


def parse_tps(text: str) -> dict[str, float]:
    """pgbench's summary: tps (without connection time), mean latency (ms), transactions, failures."""
    m = _TPS.search(text)
    if m is None:
        raise BenchError(f"no 'tps = ...' in pgbench's output: {text.strip()[-300:]}")
    out = {"tps": float(m.group(1))}
    for key, rx in (("latency_ms", _LAT), ("transactions", _TX), ("failed", _FAILED)):
        if (mm := rx.search(text)) is not None:
            out[key] = float(mm.group(1))
    return out


class PgCluster(Staged["PgCluster"]):
    """initdb in ``parent/pgdata``, start on a private socket; ``pgbench`` runs against it."""

    def __init__(self, parent: Path) -> None:
        self.bindir = pg_bindir()
        self.data = parent / "pgdata"
        self.sockdir = Path(tempfile.mkdtemp(prefix="vstor-pg-"))
        self.log = parent / "postgres.log"
        super().__init__()
        self.user = pwd.getpwnam(PG_USER)

    def _as_pg(self, *cmd: str, timeout: float = 300) -> str:
        return run(["runuser", "-u", PG_USER, "--", *cmd], timeout=timeout).stdout

    def setup(self) -> PgCluster:
        self.stack.callback(best_effort(f"remove {self.sockdir}", lambda: shutil.rmtree(self.sockdir)))
        os.chown(self.sockdir, self.user.pw_uid, self.user.pw_gid)
        self.data.mkdir()
        os.chown(self.data, self.user.pw_uid, self.user.pw_gid)
        self.log.touch()
        os.chown(self.log, self.user.pw_uid, self.user.pw_gid)
        self._as_pg(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", PG_USER,
                    "--no-instructions")
        opts = f"-k {self.sockdir} -p {PORT} -c listen_addresses=''"
        with signals_deferred():
            self.stack.callback(best_effort("stop PostgreSQL", self._stop))
            self._as_pg(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                        "-o", opts, "-w", "-t", "120", "start", timeout=180)
        return self

    def _stop(self) -> None:
        pidfile = self.data / "postmaster.pid"
        if not pidfile.exists():
            return
        pid = int(pidfile.read_text().split()[0])
        try:
            self._as_pg(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop",
                        timeout=60)
        except BenchError:
            stop_process(pid, grace=5, sig=signal.SIGKILL)

    def pgbench(self, *args: str, timeout: float = 1800) -> str:
        return self._as_pg(str(self.bindir / "pgbench"), "-h", str(self.sockdir), "-p", str(PORT), *args,
                           PG_USER, timeout=timeout)
