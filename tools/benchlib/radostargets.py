"""bench_rados's targets on one Ceph cluster (benchlib/ceph.py), its fio jobs and `rados bench`.

    vstor  a vstor volume of a rados:// pool, served by a vstor array through FUSE; fio uses libaio on
           the FUSE file opened O_DIRECT|O_DSYNC, iodepth = the queue depth, one process: vstor
           makes each write of an O_DSYNC handle durable before it answers, and the writes in
           flight share its group commit
    vstor-psync  the same volume driven as before 2026-12-04: psync, one process per queue slot
           (numjobs), an fdatasync after every write; the kernel's FUSE holds the file's inode
           lock across each write and each fsync, so the slots take turns
    rbd    an RBD image of the same size; fio --ioengine=rbd with iodepth = the queue depth; librbd
           with its cache off acknowledges a write once the OSD has committed it, so it is durable too
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ceph import BenchCluster
from .fio import run_fio
from .procs import BenchError, Staged, best_effort, run
from .targets import Vstor

__all__ = ["JOBS", "WRITE_TARGETS", "RJob", "RadosVstor", "RbdImage", "fio_args", "rados_bench", "run_rjob",
           "warm_up"]


@dataclass(frozen=True)
class RJob:
    name: str
    rw: str
    bs: str
    qd: int
    metric: str  # "MB/s" (10^6 bytes/s) or "IOPS"
    time_based: bool = True

    @property
    def direction(self) -> str:
        return "write" if "write" in self.rw else "read"

    @property
    def sequential(self) -> bool:
        return not self.rw.startswith("rand")


# Order matters: the first job lays the whole volume out sequentially at QD1 (so the reads find a
# sequentially written volume on both targets); the reads come before the QD16 and random writes,
# which would scatter it (16 writers interleave in vstor's journal).
JOBS = (
    RJob("seq-write-qd1", "write", "1M", 1, "MB/s", time_based=False),
    RJob("seq-read-qd1", "read", "1M", 1, "MB/s"),
    RJob("seq-read-qd16", "read", "1M", 16, "MB/s"),
    RJob("rand-read-qd1", "randread", "4k", 1, "IOPS"),
    RJob("rand-read-qd16", "randread", "4k", 16, "IOPS"),
    RJob("seq-write-qd16", "write", "1M", 16, "MB/s"),
    RJob("rand-write-qd1", "randwrite", "4k", 1, "IOPS"),
    RJob("rand-write-qd16", "randwrite", "4k", 16, "IOPS"),
)
WRITE_TARGETS = ("seq-write-qd1", "seq-write-qd16", "rand-write-qd1", "rand-write-qd16")  # >= 0.7 of fio rbd


def fio_args(job: RJob, target: str | Path, size: int, runtime: int, seq_cap: int, direct: int,
             method: str = "aio") -> list[str]:
    """fio for one job: on an RBD image (target "POOL/IMAGE" as a str) or on vstor's FUSE file (a Path),
    there with ``method`` "aio" (libaio, O_DSYNC writes) or "psync" (numjobs, fdatasync after each)."""
    a = ["fio", f"--name={job.name}", f"--rw={job.rw}", f"--bs={job.bs}", "--randrepeat=0",
         "--group_reporting=1", "--output-format=json"]
    a += ["--time_based=1", f"--runtime={runtime}"] if job.time_based else [f"--runtime={seq_cap}"]
    if isinstance(target, str):
        pool, image = target.split("/", 1)
        return a + ["--ioengine=rbd", "--clientname=admin", f"--pool={pool}", f"--rbdname={image}",
                    f"--iodepth={job.qd}", "--numjobs=1", f"--size={size}"]
    if method == "aio":  # one process, QD in flight, each write durable when it completes: as rbd
        a += [f"--filename={target}", "--ioengine=libaio", f"--direct={direct}", f"--iodepth={job.qd}",
              "--numjobs=1", "--allow_file_create=0", f"--size={size}"]
        return a + ["--sync=dsync"] if job.direction == "write" else a
    a += [f"--filename={target}", "--ioengine=psync", f"--direct={direct}", "--iodepth=1", f"--numjobs={job.qd}",
          "--allow_file_create=0"]
    if job.sequential and job.qd > 1:  # QD sequential streams, each over its own 1/QD of the volume
        a += [f"--size={size // job.qd}", f"--offset_increment={size // job.qd}"]
    else:
        a.append(f"--size={size}")
    if job.direction == "write":
        a.append("--fdatasync=1")  # acknowledged = durable, as librbd's acknowledgement
    return a


def run_rjob(job: RJob, target: str | Path, size: int, runtime: int, seq_cap: int, direct: int,
             method: str = "aio") -> dict[str, Any]:
    cmd = fio_args(job, target, size, runtime, seq_cap, direct, method)
    fj = run_fio(cmd, job.name, (runtime if job.time_based else seq_cap) + 300)
    d = fj[job.direction]
    out = {"value": round(d["bw_bytes"] / 1e6, 1) if job.metric == "MB/s" else round(d["iops"]),
           "metric": job.metric, "bytes": d["io_bytes"], "runtime_s": d["runtime"] / 1000,
           "lat_mean_us": round(d["lat_ns"]["mean"] / 1000, 1),
           "clat_p99_us": round(d.get("clat_ns", {}).get("percentile", {}).get("99.000000", 0) / 1000, 1),
           "command": cmd}
    sync = fj.get("sync", {}).get("lat_ns", {})
    if sync.get("mean"):
        out["sync_lat_mean_us"] = round(sync["mean"] / 1000, 1)
    return out


class RadosVstor(Vstor):
    """A volume of a vstor pool at rados://POOL/PREFIX (plain: no compression, no encryption). The
    caller sets VSTOR_CEPH_CONF and VSTOR_RADOS_STATE_DIR in the environment the CLI inherits."""

    def __init__(self, name: str, workdir: Path, size: int, location: str) -> None:
        super().__init__(name, workdir, size, "plain")
        self.pool = location  # type: ignore[assignment]  # every CLI call takes --pool LOCATION

    def finish(self) -> None:
        """No kill -9 and replay here (the takeover measurements do that on RADOS)."""


class RbdImage(Staged[str]):
    """An RBD image of ``size`` bytes in ``pool``; entering returns "POOL/IMAGE", leaving removes it."""

    kind = "rbd"

    def __init__(self, cluster: BenchCluster, pool: str, image: str, size: int) -> None:
        super().__init__()
        self.cluster, self.pool, self.image, self.size = cluster, pool, image, size

    def setup(self) -> str:
        c = str(self.cluster.conf)
        run(["rbd", "-c", c, "create", "--size", f"{self.size >> 20}M", f"{self.pool}/{self.image}"])
        rm = ["rbd", "-c", c, "rm", "--no-progress", f"{self.pool}/{self.image}"]
        self.stack.callback(best_effort(f"remove RBD image {self.image}", lambda: run(rm, timeout=300)))
        return f"{self.pool}/{self.image}"


def warm_up(cluster: BenchCluster, pool: str, size: int, runtime: int, seq_cap: int) -> dict[str, float]:
    """Write a scratch RBD image of ``size`` sequentially at QD1, then for ``runtime`` s at QD16,
    and remove it: the measured rounds then start on an OSD past its first writes. A new OSD's
    first few GiB of such writes are slower (rbd's own whole-image write went 364 then 487
    MB/s, back to back, on a new cluster), so without this the first target of round 1 paid for
    them and the second did not. Returns the two figures (MB/s)."""
    job = next(j for j in JOBS if j.name == "seq-write-qd16")
    with RbdImage(cluster, pool, "warm-up", size) as where:
        first = run_rjob(JOBS[0], where, size, runtime, seq_cap, 1)["value"]
        then = run_rjob(job, where, size, runtime, seq_cap, 1)["value"]
    return {JOBS[0].name: first, job.name: then}


def _rados_figures(text: str) -> dict[str, float]:
    """Bandwidth and average IOPS from `rados bench`'s summary (its 'MB' are MiB: turned into 10^6)."""
    out = {}
    for key, pattern in (("MB/s", r"^Bandwidth \(MB/sec\):\s+([\d.]+)"), ("IOPS", r"^Average IOPS:\s+([\d.]+)"),
                         ("lat_mean_ms", r"^Average Latency\(s\):\s+([\d.]+)")):
        m = re.search(pattern, text, re.M)
        if m:
            v = float(m.group(1))
            out[key] = round(v * 1.048576, 1) if key == "MB/s" else (round(v * 1000, 2) if key.endswith("ms")
                                                                      else round(v))
    if "MB/s" not in out:
        raise BenchError(f"rados bench: no summary in its output: {text.strip()[-300:]}")
    return out


RADOS_RUNS = (  # (name, arguments after "bench SECONDS"); the seq run reads what the first one wrote
    ("write 4M t16", ["write", "-b", str(4 << 20), "-t", "16", "--no-cleanup"]),
    ("seq 4M t16", ["seq", "-t", "16"]),
    ("write 1M t1", ["write", "-b", str(1 << 20), "-t", "1", "--no-cleanup"]),
    ("write 1M t16", ["write", "-b", str(1 << 20), "-t", "16", "--no-cleanup"]),
    ("write 4K t1", ["write", "-b", "4096", "-t", "1", "--no-cleanup"]),
    ("write 4K t16", ["write", "-b", "4096", "-t", "16", "--no-cleanup"]),
)


def rados_bench(cluster: BenchCluster, pool: str, seconds: int) -> dict[str, dict[str, Any]]:
    """`rados bench` in a pool of its own (deleted afterwards, with the objects it left)."""
    cluster.pool(pool, "rados")
    out: dict[str, dict[str, Any]] = {}
    try:
        for name, args in RADOS_RUNS:
            cmd = ["rados", "-c", str(cluster.conf), "-p", pool, "bench", str(seconds), *args]
            out[name] = {**_rados_figures(run(cmd, timeout=seconds + 120).stdout), "command": cmd}
            print(f"   rados bench {name:<13} {out[name]['MB/s']:>8,.1f} MB/s {out[name]['IOPS']:>8,} IOPS", flush=True)
    finally:
        cluster.ceph("osd", "pool", "delete", pool, pool, "--yes-i-really-really-mean-it")
    return out
