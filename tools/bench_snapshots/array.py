"""bench_snapshots' fio job and array: one fio job (with the daemon's CPU use), the fill, and an
array with one 1 GiB volume in group G, timed stop/start and kill -9."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tools.benchlib.fio import direct_io_works, run_fio
from tools.benchlib.procs import BenchError, signals_deferred, stop_process, unmount
from tools.benchlib.targets import Vstor
from tools.benchlib.timing import timed
from vstor.control.host.lock import daemon_pid
from vstor.store.superblock import layout

from .common import GIB, GROUP, PERCENTILES, Stalled, busy_threads, daemon_stack, finish, read_bounded, reap_orphans


def fio(path: Path, name: str, rw: str, bs: str, size: int, runtime: int | None, stall: float,
        extra: Sequence[str] = ()) -> dict[str, Any]:
    """One fio job (psync, QD1, direct=1) on path; IOPS and completion-latency percentiles in us.
    Raises Stalled if it has not finished stall seconds after its runtime (no answer from the daemon)."""
    cmd = ["fio", f"--name={name}", f"--filename={path}", f"--rw={rw}", f"--bs={bs}", f"--size={size}",
           "--ioengine=psync", "--iodepth=1", "--numjobs=1", "--direct=1", "--allow_file_create=0",
           f"--percentile_list={PERCENTILES}", "--output-format=json"]
    cmd += ["--time_based=1", f"--runtime={runtime}"] if runtime else ["--runtime=900"]
    cmd += list(extra)
    # fio must be gone (its file closed) before any teardown, or parked until the daemon dies (finish)
    fj = run_fio(cmd, name, (runtime or 900) + stall, stop=finish, timeout_error=Stalled)
    d = fj["read" if "read" in rw else "write"]
    clat = d.get("clat_ns", {})
    pct = clat.get("percentile", {})

    def p(key: str) -> float | None:
        return round(pct[key] / 1000, 1) if key in pct else None

    return {"iops": round(d["iops"]), "mb_s": round(d["bw_bytes"] / 1e6, 1), "ios": d["total_ios"],
            "runtime_s": d["runtime"] / 1000, "clat_mean_us": round(clat.get("mean", 0) / 1000, 1),
            "p50_us": p("50.000000"), "p99_us": p("99.000000"), "p99_9_us": p("99.900000"),
            "max_us": round(clat.get("max", 0) / 1000, 1), "command": shlex.join(cmd)}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fio_cpu(arr: Array, image: Path, name: str, rw: str, runtime: int, stall: float) -> dict[str, Any]:
    """A 4 KiB random fio job on the array's volume, with the daemon's CPU use meanwhile (% of one core)."""
    pid = arr.daemon_pid()
    c0, t0 = cpu_seconds(pid), time.monotonic()
    r = fio(image, name, rw, "4k", 1 * GIB, runtime, stall)
    r["daemon_cpu_pct"] = round(100 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0))
    return r


def fill(path: Path, size: int, stall: float) -> float:
    """Sequential 1 MiB writes over the whole volume, then fdatasync; returns the seconds taken."""
    return timed(lambda: fio(path, "fill", "write", "1M", size, None, stall, ["--end_fsync=1"]))


# -- an array with one 1 GiB volume in group G --------------------------------------------------
class Array(Vstor):
    """benchlib's vstor target (pool init, array start, volume 'bench', teardown that survives
    errors and Ctrl-C), with the volume put in a group and timed stop/start."""

    running = False  # whether the daemon runs (as far as we know)

    def __init__(self, name: str, workdir: Path, size: int) -> None:
        super().__init__(name, workdir, size, "plain")

    def setup(self) -> Path:
        image = super().setup()
        self.running = True
        self.cli("group", "create", GROUP, "--volumes", self.volume)
        if not direct_io_works(image):
            raise BenchError(f"O_DIRECT does not work on {image}")
        return image

    @property
    def socket(self) -> str:
        return layout(str(self.pool))["socket"]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.vstor(*args, "--pool", str(self.pool), timeout=timeout)

    def daemon_pid(self) -> int:
        return self._pid()

    def stats(self, timeout: float) -> dict[str, Any]:
        """The counters of DIR/stats.json (read by cat: a stalled daemon cannot hang us)."""
        return json.loads(read_bounded(self.mnt / "stats.json", timeout))["counters"]

    def stop_timed(self, timeout: float) -> float:
        t = timed(lambda: self.cli("array", "stop", "--timeout", str(int(timeout)), timeout=timeout + 30))
        self.pid, self.running = None, False  # stopped: the teardown finds nothing to stop
        return t

    def kill(self) -> None:
        """kill -9 the daemon (known pid, or the pool lock's holder), reap what waited on it, unmount."""
        pid = self.pid or daemon_pid(str(self.pool))
        with signals_deferred():
            if pid and pid > 0:
                stop_process(pid, grace=5, sig=signal.SIGKILL)
            reap_orphans()
            unmount(self.mnt)
        self.pid, self.running = None, False

    def start_timed(self) -> float:
        self._start()
        self.running = True
        return float(self.extras["start_seconds"])

    def kill_and_restart(self) -> float:
        """kill -9 (the daemon may be stuck holding the store lock), unmount, start again."""
        self.kill()
        return self.start_timed()


def pause_stats(counters: dict[str, Any]) -> dict[str, Any] | None:
    return counters.get("snapshot_pause_us")


def stall_error(arr: Array, exc: BenchError) -> BenchError:
    """A Stalled error, completed with what the daemon is busy with (py-spy), for the report."""
    busy = busy_threads(daemon_stack(arr.pid))
    return BenchError(f"{exc}: the daemon stalled" + (f"; busy threads: {' | '.join(busy)}" if busy else ""))
