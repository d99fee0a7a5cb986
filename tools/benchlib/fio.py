"""The benchmarks' one fio runner and fio-JSON parser, and the four fio jobs bench_fio runs on every target."""

from __future__ import annotations

import json
import mmap
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import BenchError

__all__ = ["AGED_JOBS", "JOBS", "PHASES", "FioSettings", "Job", "direct_io_works", "fio_version", "parse_job",
           "run_fio", "run_job", "stop_fio"]


@dataclass(frozen=True)
class Job:
    name: str
    rw: str
    bs: str
    metric: str  # "MB/s" (10^6 bytes/s) or "IOPS"
    drop_caches_before: bool
    time_based: bool = False
    end_fsync: bool = False
    runtime: int | None = None  # seconds of a time-based job; None: the run's --runtime
    idle_before: int = 0  # seconds the target is left idle before the job (background work may run)

    @property
    def direction(self) -> str:
        return "write" if "write" in self.rw else "read"


# Order matters: the sequential write lays the whole file out, so every later job (and the
# random reads in particular) touches real data rather than holes.
JOBS = (
    Job("seq-write", "write", "1M", "MB/s", drop_caches_before=False, end_fsync=True),
    Job("seq-read", "read", "1M", "MB/s", drop_caches_before=True),
    Job("rand-write", "randwrite", "4k", "IOPS", drop_caches_before=False, time_based=True, end_fsync=True),
    Job("rand-read", "randread", "4k", "IOPS", drop_caches_before=True, time_based=True),
)

# The aged phase (issue 25): the file written sequentially, then overwritten by 4 KiB random
# writes for 12 s, then read at once (no idle time), cold and warm, and again after 60 s idle,
# so that a volume whose chunks random overwrites scattered is measured as users meet it.
AGED_JOBS = (
    JOBS[0],
    Job("age", "randwrite", "4k", "IOPS", drop_caches_before=False, time_based=True, end_fsync=True, runtime=12),
    Job("aged-seq-read", "read", "1M", "MB/s", drop_caches_before=True),
    Job("aged-rand-read", "randread", "4k", "IOPS", drop_caches_before=True, time_based=True),
    Job("aged-rand-read-warm", "randread", "4k", "IOPS", drop_caches_before=False, time_based=True),
    Job("aged-seq-read-idle", "read", "1M", "MB/s", drop_caches_before=True, idle_before=60),
)
PHASES = {"fresh": JOBS, "aged": AGED_JOBS}


@dataclass(frozen=True)
class FioSettings:
    size: int
    direct: int
    runtime: int  # seconds, time-based (random) jobs
    seq_cap: int  # seconds, upper bound of a sequential pass
    compress_percentage: int | None  # fio buffer_compress_percentage; None: incompressible

    def args(self, job: Job, path: Path) -> list[str]:
        a = [
            "fio", f"--name={job.name}", f"--filename={path}", f"--rw={job.rw}", f"--bs={job.bs}",
            f"--size={self.size}", "--ioengine=psync", "--iodepth=1", "--numjobs=1",
            f"--direct={self.direct}",
            "--allow_file_create=0",  # never create (or unlink) anything beside the target
            "--output-format=json",
        ]
        if job.time_based:
            a += ["--time_based=1", f"--runtime={job.runtime or self.runtime}"]
        else:
            a += [f"--runtime={self.seq_cap}"]  # a cap: normally the size ends the job
        if job.end_fsync:
            a.append("--end_fsync=1")
        if self.compress_percentage is not None and job.direction == "write":
            a += ["--refill_buffers=1", f"--buffer_compress_percentage={self.compress_percentage}"]
        return a


def parse_job(stdout: str, stderr: str, returncode: int | None, name: str) -> dict[str, Any]:
    """The first job of fio's JSON output (fio may print notes before the JSON); BenchError if fio failed."""
    try:
        fj: dict[str, Any] = json.loads(stdout[stdout.index("{"):])["jobs"][0]
    except (ValueError, KeyError, IndexError) as exc:
        raise BenchError(f"fio {name} failed ({returncode}): {stderr.strip()[-500:]}") from exc
    if returncode != 0 or fj.get("error"):
        raise BenchError(f"fio {name}: exit {returncode}, job error {fj.get('error')}: {stderr.strip()[-500:]}")
    return fj


def stop_fio(proc: subprocess.Popen[str], grace: float = 10) -> None:
    """Make sure fio has ended: SIGINT first (fio's job processes run in sessions of their own and
    outlive a SIGKILLed fio, blocked and holding the file open), then SIGKILL after grace seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_fio(cmd: list[str], name: str, timeout: float, stop: Callable[[subprocess.Popen[str]], None] = stop_fio,
            timeout_error: type[BenchError] = BenchError) -> dict[str, Any]:
    """Run fio (``cmd`` with --output-format=json) and return its job's JSON. On a timeout (raised as
    timeout_error) or an interruption, ``stop`` makes sure fio is gone before the caller tears down."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise timeout_error(f"fio {name}: no result after {timeout:.0f} s") from exc
    finally:
        stop(proc)
    return parse_job(stdout, stderr, proc.returncode, name)


def run_job(settings: FioSettings, job: Job, path: Path) -> dict[str, Any]:
    """Run one job; returns the headline figure and the latencies behind it."""
    cmd = settings.args(job, path)
    timeout = ((job.runtime or settings.runtime) if job.time_based else settings.seq_cap) + 300
    fj = run_fio(cmd, job.name, timeout)
    d = fj[job.direction]
    clat = d.get("clat_ns", {})
    pct = clat.get("percentile", {})
    result = {
        "value": round(d["bw_bytes"] / 1e6, 1) if job.metric == "MB/s" else round(d["iops"]),
        "metric": job.metric,
        "bytes": d["io_bytes"],
        "ios": d["total_ios"],
        "runtime_s": d["runtime"] / 1000,  # includes the end_fsync of write jobs
        "lat_mean_us": round(d["lat_ns"]["mean"] / 1000, 1),
        "clat_p99_us": round(pct.get("99.000000", 0) / 1000, 1),
        "command": cmd,
    }
    if not job.time_based and d["io_bytes"] < settings.size:
        result["note"] = f"stopped by the {settings.seq_cap}s cap after {d['io_bytes'] >> 20} MiB"
    return result


def fio_version() -> str:
    return subprocess.run(["fio", "--version"], capture_output=True, text=True).stdout.strip()


def direct_io_works(path: Path) -> bool:
    """Can the target be opened with O_DIRECT and read 4 KiB from offset 0?"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return False
    try:
        buf = mmap.mmap(-1, 4096)  # page-aligned
        return os.preadv(fd, [buf], 0) == 4096
    except OSError:
        return False
    finally:
        os.close(fd)
