"""The NBD servers tools/bench_nbd.py compares, each in a network namespace, and their TLS files.

    NbdkitServer  nbdkit's file plugin serving a sparse file of the volume's size (the baseline)
    VstorServer   a vstor array (journal and checksums on, its defaults) exporting one volume

Each is a context manager: entering starts the server and returns the URI a client in the other
namespace dials; leaving stops it and removes what it made, also after an error or Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from .procs import (
    BenchError,
    Staged,
    best_effort,
    is_mounted,
    run,
    signals_deferred,
    spawn,
    stop_process,
    tail,
    unmount,
    wait_until,
)
from .targets import make_sparse

VSTOR = Path(sys.executable).parent / "vstor"
PORT = 10809  # the namespaces are the benchmark's own: the standard port cannot collide
START_TIMEOUT = 30.0


def make_certs(directory: Path, server_cn: str) -> tuple[Path, Path, Path]:
    """A vstor pki CA with a server and a client certificate, laid out three ways:
    ``pki`` (vstor's own: ca.pem, NAME.pem, NAME.key), ``server`` (nbdkit's --tls-certificates:
    ca-cert.pem, server-cert.pem, server-key.pem) and ``client`` (libnbd's: ca-cert.pem,
    client-cert.pem, client-key.pem). Returns (pki, server, client)."""
    from vstor.replication.pki import init_ca, issue

    pki, server, client = directory / "pki", directory / "server", directory / "client"
    init_ca(str(pki))
    issue(str(pki), server_cn)
    issue(str(pki), "bench-client")
    for d, cn, role in ((server, server_cn, "server"), (client, "bench-client", "client")):
        d.mkdir(mode=0o700)
        shutil.copy(pki / "ca.pem", d / "ca-cert.pem")
        shutil.copy(pki / f"{cn}.pem", d / f"{role}-cert.pem")
        shutil.copy(pki / f"{cn}.key", d / f"{role}-key.pem")
    return pki, server, client


class Server(Staged[str]):
    kind = ""

    def __init__(self, name: str, workdir: Path, size: int, netns: str, addr: str, tls: Path | None = None) -> None:
        self.name, self.size, self.netns, self.addr, self.tls = name, size, netns, addr, tls
        self.dir = workdir / name
        super().__init__()
        self.pid: int | None = None

    def ns(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", *argv]

    def __enter__(self) -> str:
        self.dir.mkdir()
        self.stack.callback(best_effort(f"remove {self.dir}", lambda: shutil.rmtree(self.dir)))
        return super().__enter__()

    def uri(self, export: str) -> str:
        return f"{'nbds' if self.tls else 'nbd'}://{self.addr}:{PORT}/{export}"


class NbdkitServer(Server):
    kind = "nbdkit"

    def setup(self) -> str:
        backing = make_sparse(self.dir / "backing.img", self.size)
        log, pidfile = self.dir / "nbdkit.log", self.dir / "nbdkit.pid"
        tls = ["--tls=require", f"--tls-certificates={self.tls}"] if self.tls else []
        cmd = self.ns(["nbdkit", "--foreground", "--exit-with-parent", "-P", str(pidfile), "-i", self.addr,
                       "-p", str(PORT), *tls, "file", str(backing)])
        with signals_deferred():
            proc = spawn(cmd, log)
            self.stack.callback(best_effort("stop nbdkit", lambda: stop_process(proc)))
        if not wait_until(lambda: (pidfile.exists() and pidfile.stat().st_size > 0) or proc.poll() is not None,
                          START_TIMEOUT) or proc.poll() is not None:
            raise BenchError(f"{self.name}: nbdkit did not start:\n{tail(log)}")
        self.pid = int(pidfile.read_text())
        return self.uri("")


class VstorServer(Server):
    """A pool with vstor's defaults (journal, checksums), one volume, exported."""

    kind = "vstor"
    volume = "bench"
    start_args: tuple[str, ...] = ()  # more 'array start' options (bench_nbd --nbd-poll-us)

    def vstor(self, *args: str, timeout: float = 120) -> str:
        env_pool = ["--pool", str(self.dir / "pool")]
        return run([str(VSTOR), *args, *env_pool], timeout=timeout).stdout

    def setup(self) -> str:
        pool, mnt = self.dir / "pool", self.dir / "mnt"
        run([str(VSTOR), "pool", "init", str(pool)])
        self.stack.callback(best_effort(f"stop the {self.name} array", self._stop))
        tls = ["--nbd-tls-dir", str(self.tls)] if self.tls else []
        run(self.ns([str(VSTOR), "array", "start", "--pool", str(pool), "--mount", str(mnt),
                     "--nbd", f"{self.addr}:{PORT}", *tls, *self.start_args]), timeout=300)
        from vstor.control.host.lock import daemon_pid

        self.pid = daemon_pid(str(pool))
        self.vstor("volume", "create", self.volume, "--size", str(self.size))
        self.vstor("volume", "export", self.volume)
        return self.uri(self.volume)

    def _stop(self) -> None:
        pool, mnt = self.dir / "pool", self.dir / "mnt"
        try:
            run([str(VSTOR), "array", "stop", "--pool", str(pool)], timeout=150)
        except BenchError:
            if self.pid:
                stop_process(self.pid, grace=5)
        if is_mounted(mnt):
            unmount(mnt)


def tool_missing() -> str | None:
    missing = [c for c in ("fio", "nbdkit", "nsenter", "fusermount3") if shutil.which(c) is None]
    if missing:
        return f"missing commands: {', '.join(missing)} (make setup)"
    if not VSTOR.exists():
        return f"{VSTOR} not found"
    if os.geteuid() != 0:
        return "needs root (network namespaces, FUSE)"
    return None
