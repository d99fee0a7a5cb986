"""The benchmark targets: each sets up one file-like target of a given size and undoes it all.

    raw          fio directly on a sparse file
    passthrough  tools/passthrough_fuse.py (bare mfusepy, vstor's FUSE options) over a sparse file
    nbdfuse      nbdkit's file plugin exposed as a FUSE file by nbdfuse (C, libfuse3)
    vstor-*      a vstor volume, plain / lz4 / aes pool
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .procs import (
    BenchError,
    RssSampler,
    Staged,
    best_effort,
    is_mounted,
    rss_kib,
    run,
    signals_deferred,
    spawn,
    stop_process,
    tail,
    unmount,
    wait_until,
    warn,
)

TOOLS = Path(__file__).resolve().parent.parent
VSTOR = Path(sys.executable).parent / "vstor"
VSTOR_VARIANTS = {
    "plain": ["--compress", "none"],
    "lz4": ["--compress", "lz4"],
    "aes": ["--compress", "none", "--encrypt"],
}
START_TIMEOUT = 30.0
TIB = 1 << 40


def make_sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


class Target(Staged[Path]):
    """Context manager: entering returns the path fio works on; leaving undoes everything."""

    kind = ""
    keep = False  # leave the directory (servers stopped) for a look afterwards
    pid: int | None = None  # the FUSE server's, once it runs

    def __init__(self, name: str, workdir: Path, size: int) -> None:
        self.name = name
        self.dir = workdir / name
        self.size = size
        self.extras: dict[str, Any] = {}
        super().__init__()

    def __enter__(self) -> Path:
        self.dir.mkdir()
        self.stack.callback(best_effort(f"remove {self.dir}", self._remove_dir))
        return super().__enter__()

    def _remove_dir(self) -> None:
        if not self.keep:
            shutil.rmtree(self.dir)

    def before_job(self, job: str) -> None:
        """Hook run before each fio job."""

    def after_job(self, job: str, result: dict[str, Any]) -> None:
        """Hook run after each fio job, with its result."""

    def finish(self) -> None:
        """Hook run after the last job, before teardown."""

    def _fuse_server(self, cmd: list[str], mnt: Path, log: Path) -> subprocess.Popen[bytes]:
        """Start a FUSE server mounting at mnt and register its teardown: unmount, stop, lazy unmount."""
        mnt.mkdir()
        procs: list[subprocess.Popen[bytes]] = []

        def stop() -> None:
            unmount(mnt)
            for proc in procs:
                stop_process(proc)
            if is_mounted(mnt):
                run(["fusermount3", "-uz", str(mnt)], check=False)

        self.stack.callback(best_effort(f"stop {cmd[0]} on {mnt}", stop))
        with signals_deferred():  # no window where the server runs but its teardown is unknown
            procs.append(spawn(cmd, log))
        return procs[0]

    def _wait_ready(self, proc: subprocess.Popen[bytes], ready: Callable[[], bool], log: Path) -> None:
        if not wait_until(lambda: ready() or proc.poll() is not None, START_TIMEOUT):
            raise BenchError(f"{self.name}: not ready after {START_TIMEOUT:.0f}s:\n{tail(log)}")
        if proc.poll() is not None:
            raise BenchError(f"{self.name}: server exited ({proc.returncode}):\n{tail(log)}")


class Raw(Target):
    kind = "raw"

    def setup(self) -> Path:
        return make_sparse(self.dir / "raw.img", self.size)


class Passthrough(Target):
    kind = "passthrough"

    def __init__(self, name: str, workdir: Path, size: int, stats: bool = False, copy_read: bool = False) -> None:
        super().__init__(name, workdir, size)
        self.stats = stats
        self.copy_read = copy_read

    def setup(self) -> Path:
        backing = make_sparse(self.dir / "backing.img", self.size)
        mnt, log = self.dir / "mnt", self.dir / "passthrough.log"
        cmd = [sys.executable, str(TOOLS / "passthrough_fuse.py"), str(backing), str(mnt)]
        if self.copy_read:
            cmd.append("--copy-read")
        if self.stats:
            cmd.append("--stats")
            self.stack.callback(best_effort("read request sizes", lambda: self._read_stats(log)))
        proc = self._fuse_server(cmd, mnt, log)
        self._wait_ready(proc, lambda: "READY" in log.read_text(errors="replace"), log)
        self.pid = proc.pid
        return mnt / "img"

    def _read_stats(self, log: Path) -> None:  # runs once the server has stopped
        self.extras["request_sizes"] = [ln for ln in log.read_text().splitlines() if "request sizes" in ln]


class Nbdfuse(Target):
    kind = "nbdfuse"

    def setup(self) -> Path:
        backing = make_sparse(self.dir / "backing.img", self.size)
        mnt, log, pidfile = self.dir / "mnt", self.dir / "nbdfuse.log", self.dir / "nbdfuse.pid"
        # "[ CMD ]" mode: nbdfuse runs nbdkit itself (systemd socket activation, one connection);
        # unmounting makes nbdfuse exit, and --exit-with-parent takes nbdkit along.
        cmd = ["nbdfuse", "-P", str(pidfile), str(mnt),
               "[", "nbdkit", "--exit-with-parent", "file", str(backing), "]"]
        proc = self._fuse_server(cmd, mnt, log)
        self._wait_ready(proc, lambda: pidfile.exists() and pidfile.stat().st_size > 0, log)
        return mnt / "nbd"


def vstor_available() -> str | None:
    """None if the vstor CLI can be used, else why not."""
    if not VSTOR.exists():
        return f"{VSTOR} not found"
    res = subprocess.run([str(VSTOR), "--help"], capture_output=True, text=True)
    if res.returncode != 0:
        return f"'vstor --help' failed: {(res.stderr or res.stdout).strip()[-300:]}"
    return None


class Vstor(Target):
    """A vstor pool with one volume; measures RSS after the write and journal replay after kill -9."""

    kind = "vstor"
    volume = "bench"

    def __init__(self, name: str, workdir: Path, size: int, variant: str, init_args: list[str] | None = None) -> None:
        super().__init__(name, workdir, size)
        self.variant = variant
        self.init_args = init_args or []  # more 'vstor pool init' options
        self.pool, self.mnt = self.dir / "pool", self.dir / "mnt"
        self.rss_before = 0
        self.sampler: RssSampler | None = None

    def vstor(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run([str(VSTOR), *args], timeout=timeout)

    def status(self) -> dict[str, Any]:
        return json.loads(self.vstor("array", "status", "--pool", str(self.pool), "--json").stdout)

    def journal_bytes(self) -> tuple[int, int]:
        """From one status query, since the daemon started: the bytes the pool's journal
        appended (records of host writes, GC and compaction moves, map and checkpoint records
        alike) and the zeros it wrote ahead of its tail (dense syncs,
        vstor/store/journal/prewrite.py: device writes that are neither host data nor records)."""
        journal = self.status()["journal"]
        return int(journal["appended_bytes"]), int(journal.get("prepared_bytes", 0))

    def counters(self) -> dict[str, int]:
        """The array's counters (MOUNT/stats.json): GC moves, compactions, defragmentation."""
        return dict(json.loads((self.mnt / "stats.json").read_text())["counters"])

    def setup(self) -> Path:
        init = ["pool", "init", str(self.pool), "--chunk-size", "512K", *VSTOR_VARIANTS[self.variant], *self.init_args]
        if self.variant == "aes":
            init += ["--key-file", str(self.dir / "key")]  # vstor creates it with a random key
        self.vstor(*init)
        self.stack.callback(best_effort(f"stop the {self.name} array", self._stop))
        self._start()
        self.vstor("volume", "create", self.volume, "--size", str(self.size), "--pool", str(self.pool))
        image = self.mnt / "volumes" / self.volume
        if not wait_until(image.exists, 10):
            raise BenchError(f"{image} did not appear")
        self.rss_before = rss_kib(self._pid())
        return image

    def _start(self) -> None:
        t0 = time.monotonic()
        self.vstor("array", "start", "--pool", str(self.pool), "--mount", str(self.mnt), timeout=600)
        self.extras["start_seconds"] = round(time.monotonic() - t0, 2)
        self.pid = None
        self._pid()

    def _pid(self) -> int:
        if self.pid is None:
            self.pid = int(self.status()["pid"])
        return self.pid

    def _stop(self) -> None:
        """vstor array stop; if that fails or hangs, SIGTERM then kill -9 the daemon, then unmount."""
        if self.pid is None:  # the start failed or was interrupted half-way: who holds the pool lock?
            from vstor.control.host.lock import daemon_pid

            pid = daemon_pid(str(self.pool))
            self.pid = pid if pid and pid > 0 else None
        try:
            self.vstor("array", "stop", "--pool", str(self.pool), timeout=150)
        except BenchError as exc:
            if self.pid is not None:
                warn(f"{self.name}: {exc}")
        if self.pid is not None:
            stop_process(self.pid, grace=5)
        if is_mounted(self.mnt):
            unmount(self.mnt)

    def before_job(self, job: str) -> None:
        if job == "seq-write":
            self.sampler = RssSampler(self._pid())
            self.stack.callback(self.sampler.stop)
            self.sampler.start()

    def after_job(self, job: str, result: dict[str, Any]) -> None:
        """RSS after each job; after the sequential write, its extrapolation to 1 TiB allocated."""
        rss = self.extras.setdefault("rss", {"idle_kib": self.rss_before, "after_kib": {}})
        after = rss["after_kib"][job] = rss_kib(self._pid())
        if job != "seq-write" or self.sampler is None:
            return
        self.sampler.stop()
        vols = {v["name"]: v for v in self.status().get("volumes", [])}
        allocated = int(vols.get(self.volume, {}).get("allocated") or result["bytes"])
        slope = self.sampler.slope_kib_per_byte(result["bytes"])
        rss["allocated_bytes"] = allocated
        # headline: (RSS after - RSS idle) / bytes allocated, scaled to 1 TiB; fixed costs (buffers,
        # allocator arenas) are included, so it is an upper bound, the more so for small --size
        rss["growth_mib_per_tib"] = round((after - self.rss_before) / allocated * TIB / 1024, 1)
        # marginal cost: slope of RSS against bytes written over the second half of the write
        rss["marginal_mib_per_tib"] = None if slope is None else round(slope * TIB / 1024, 1)

    def finish(self) -> None:
        """kill -9 (no clean checkpoint), restart, and read what journal replay took."""
        st = self.status()
        self.extras["journal_before_kill"] = st.get("journal")
        self.extras["fuse"] = st.get("fuse")
        pid = self._pid()
        with signals_deferred():
            stop_process(pid, grace=5, sig=signal.SIGKILL)
            unmount(self.mnt)  # the dead connection (vstor would also clear it on start)
        self._start()
        self.extras["recovery"] = self.status().get("recovery")
