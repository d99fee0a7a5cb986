"""fio through FUSE on a vstor volume of a RADOS pool, against fio's rbd engine and `rados bench`.

    .venv-rados/bin/python -m tools.bench_rados [--size 1G] [--targets vstor,rbd] [--rounds N]
                                                [--runtime S] [--rados-seconds S] [--warm-up S]
                                                [--jobs NAME,...] [--readahead] [--json-out FILE]

Brings up its own one-node Ceph cluster (one monitor, manager and OSD, BlueStore on a sparse file,
127.0.0.1 only: benchlib/ceph.py) in a temporary directory under --workdir, and in that one run
measures, one after another:

1. `rados bench` in a pool of its own: 4 MiB objects written and read back with 16 in flight,
   1 MiB and 4 KiB objects written with 1 and 16 in flight (the cluster's own ceiling);
   then a warm-up, not counted: fio rbd writes a scratch image whole and then for --warm-up
   seconds at QD16 (a new OSD's first GiB of such writes are slower, which the first target of
   round 1 would otherwise pay alone);
2. target "vstor": a vstor pool at rados://vstor-bench/rN (512K chunks, no compression) served by
   `vstor array start`, fio on its volume's FUSE file: libaio, O_DIRECT|O_DSYNC (each write
   durable when it completes), iodepth = queue depth, one process; target "vstor-psync" (only
   when named) is the same driven as before: psync, numjobs = queue depth, an fdatasync after
   every write, which the kernel's FUSE serialises (its fsync holds the file's inode lock);
3. target "rbd": an RBD image of the same size in pool rbd-bench, fio --ioengine=rbd, iodepth =
   queue depth, librbd's cache off (a write completes once the OSD has committed it).

So on both targets every write fio counts was acknowledged durable. Eight jobs per target, in
this order: 1 MiB sequential write of the whole volume at QD1 (it lays the volume out), 1 MiB
sequential read at QD1 and QD16, 4 KiB random read at QD1 and QD16, 1 MiB sequential write at
QD16, 4 KiB random write at QD1 and QD16 (all but the first time-based, --runtime seconds; QD16
sequential on vstor-psync: 16 streams over 16 slices of the volume). Ratios vstor / fio-rbd; the
target is >= 0.7 for the four write jobs. --readahead starts the daemon with
VSTOR_RADOS_READAHEAD=1 (the RADOS backend's read-ahead, off by default) to measure what it brings.
The cluster, the mounts and the daemon are torn down on success, error or Ctrl-C. Needs root
(FUSE, drop_caches), the Ceph packages and python3-rados: run it with .venv-rados/bin/python
(make venv-rados). MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tools.benchlib import options
from tools.benchlib.ceph import BenchCluster, ceph_missing
from tools.benchlib.fio import direct_io_works, fio_version
from tools.benchlib.procs import BenchError, drop_caches, install_signal_handlers, signals_deferred
from tools.benchlib.radostargets import JOBS, WRITE_TARGETS, RadosVstor, RbdImage, rados_bench, run_rjob, warm_up
from tools.benchlib.report import combine, round_ratio, table

TARGETS = ("vstor", "rbd", "vstor-psync")
DEFAULT_TARGETS = ("vstor", "rbd")
VSTOR_POOL, RBD_POOL, RADOS_BENCH_POOL = "vstor-bench", "rbd-bench", "rados-bench"
Results = dict[str, dict[str, Any]]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1G", help="size of the vstor volume and of the RBD image (default 1G)")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help="comma list of vstor,rbd,vstor-psync, in run order (default vstor,rbd)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every target this many times, round N starting at the Nth (default 1); "
                        "ratios are the median of each round's")
    p.add_argument("--runtime", type=int, default=10, help="seconds of each time-based fio job (default 10)")
    p.add_argument("--seq-cap", type=int, default=180, help="time cap of the first, whole-volume write (default 180)")
    p.add_argument("--rados-seconds", type=int, default=5,
                   help="seconds of each `rados bench` run (default 5; 0 skips rados bench)")
    p.add_argument("--warm-up", type=int, default=8, metavar="SECONDS",
                   help="before round 1, write a scratch RBD image whole and then for SECONDS at QD16, not "
                        "measured, so that no target meets a new OSD's first writes (default 8; 0 skips it)")
    p.add_argument("--jobs", default="",
                   help="comma list of the jobs to run (default all; seq-write-qd1 always runs: it lays the "
                        "volume out)")
    p.add_argument("--readahead", action="store_true",
                   help="start the vstor daemon with VSTOR_RADOS_READAHEAD=1 (the RADOS backend's read-ahead, off by "
                        "default)")
    options.add_common(p, page_reporting=False)
    a = p.parse_args(argv)
    a.size_bytes = options.size(p, a.size)
    if a.size_bytes < 64 << 20 or a.size_bytes % (16 << 20):
        p.error("--size must be a multiple of 16M, at least 64M")
    a.target_list = options.choices(p, a.targets, TARGETS, "target")
    names = options.choices(p, a.jobs, [j.name for j in JOBS], "job")
    a.job_list = [j for j in JOBS if not names or j.name in names or j is JOBS[0]]
    if a.rounds < 1 or a.runtime < 1:
        p.error("--rounds and --runtime must be at least 1")
    if a.warm_up < 0:
        p.error("--warm-up must be 0 (none) or a number of seconds")
    return a


def preflight(a: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench_rados: needs root (FUSE mounts, drop_caches)")
    if why := ceph_missing():
        raise SystemExit(f"bench_rados: {why}")
    missing = [c for c in ("fio", "fusermount3") if shutil.which(c) is None]
    if missing:
        raise SystemExit(f"bench_rados: missing commands: {', '.join(missing)} (make setup)")
    if "rbd" not in subprocess.run(["fio", "--enghelp"], capture_output=True, text=True).stdout.split():
        raise SystemExit("bench_rados: this fio has no rbd engine")
    try:
        import rados  # noqa: F401
    except ImportError:
        raise SystemExit("bench_rados: vstor needs python3-rados: run .venv-rados/bin/python -m tools.bench_rados "
                         "(make venv-rados)") from None


def measure(name: str, cluster: BenchCluster, workdir: Path, a: argparse.Namespace, n: int,
            res: dict[str, Any]) -> None:
    res.update({"kind": name, "jobs": {}, "error": None})
    print(f"== {name}", flush=True)
    target: RadosVstor | RbdImage
    if name.startswith("vstor"):
        prefix = f"r{n}" if name == "vstor" else f"p{n}"
        target = RadosVstor(f"{name}-r{n}", workdir, a.size_bytes, f"rados://{VSTOR_POOL}/{prefix}")
    else:
        target = RbdImage(cluster, RBD_POOL, f"img-r{n}", a.size_bytes)
    try:
        with target as where:
            direct = int(isinstance(where, str) or direct_io_works(where))
            res["direct"] = direct
            for job in a.job_list:
                drop_caches() if job.direction == "read" else os.sync()
                r = res["jobs"][job.name] = run_rjob(job, where, a.size_bytes, a.runtime, a.seq_cap, direct,
                                                     "psync" if name == "vstor-psync" else "aio")
                sync = f", fdatasync mean {r['sync_lat_mean_us']} us" if "sync_lat_mean_us" in r else ""
                print(f"   {job.name:<16} {r['value']:>10,} {job.metric:<4}  lat mean {r['lat_mean_us']} us, "
                      f"p99 {r['clat_p99_us']} us{sync}, {r['runtime_s']:.1f} s", flush=True)
            if isinstance(target, RadosVstor):
                res["extras"] = target.extras
                res["readahead"] = a.readahead
    except Exception as exc:  # one target failing (torn down by its with) must not stop the other
        res["error"] = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
        print(f"   FAILED: {res['error']}", flush=True)


def ratios(rounds: list[Results], name: str = "vstor") -> dict[str, float | None]:
    """``name`` / rbd per job: the median of the rounds' ratios."""
    return round_ratio(rounds, name, "rbd", JOBS)


def render(combined: Results, rat: dict[str, float | None], rb: dict[str, dict[str, Any]],
           rat_psync: dict[str, float | None] | None = None) -> str:
    def fmt(r: dict[str, Any] | None) -> str:
        return "-" if r is None else (f"{r['value']:,.1f}" if r["metric"] == "MB/s" else f"{r['value']:,.0f}")

    jobs = [j for j in JOBS if any(j.name in t["jobs"] for t in combined.values())]
    out = ["RESULTS (MB/s = 10^6 bytes/s; every write acknowledged durable: O_DSYNC on vstor (vstor-psync: "
           "fdatasync after each), librbd without cache)",
           table(["target", *(f"{j.name} {j.metric}" for j in jobs)],
                 [[n, *(fmt(t["jobs"].get(j.name)) for j in jobs)] for n, t in combined.items()])]
    if any(v is not None for v in rat.values()):
        out += ["", "RATIO vstor / fio-rbd (target >= 0.7 for " + ", ".join(WRITE_TARGETS) + ")",
                table(["ratio", *(j.name for j in jobs)],
                      [[label, *("-" if r[j.name] is None else f"{r[j.name]:.2f}" for j in jobs)]
                       for label, r in (("vstor/rbd", rat), ("vstor-psync/rbd", rat_psync or {}))
                       if any(v is not None for v in r.values())])]
    if rb:
        out += ["", "RADOS BENCH (the cluster's own figures)",
                table(["run", "MB/s", "IOPS", "lat mean ms"],
                      [[k, f"{v['MB/s']:,.1f}", f"{v.get('IOPS', 0):,}", f"{v.get('lat_mean_ms', '-')}"]
                       for k, v in rb.items()])]
    out += [f"{n}: FAILED: {t['error'].splitlines()[0]}" for n, t in combined.items() if t["error"]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    preflight(a)
    install_signal_handlers()
    workdir = Path(tempfile.mkdtemp(prefix="vstor-bench-rados-", dir=a.workdir))
    head = {"command": shlex.join(sys.orig_argv), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "kernel": platform.release(), "cpus": os.cpu_count(), "fio": fio_version(), "size": a.size_bytes,
            "runtime_s": a.runtime, "load_before": os.getloadavg(), "readahead": a.readahead,
            "commit": subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short",
                                      "HEAD"], capture_output=True, text=True).stdout.strip()}
    os.environ["VSTOR_RADOS_STATE_DIR"] = str(workdir / "state")
    os.environ["VSTOR_RADOS_READAHEAD"] = "1" if a.readahead else "0"
    rounds: list[Results] = []
    rb: dict[str, dict[str, Any]] = {}
    interrupted = False
    print(f"$ {head['command']}\n{head['date']}  commit {head['commit']}, kernel {head['kernel']}, "
          f"{head['cpus']} CPUs, {head['fio']}, load {' '.join(f'{x:.2f}' for x in head['load_before'])}; "
          f"{a.size} per target; "
          f"read-ahead {'on' if head['readahead'] else 'OFF'}", flush=True)
    try:
        cluster_obj = BenchCluster(workdir / "ceph")
        with cluster_obj as conf:
            os.environ["CEPH_CONF"] = os.environ["VSTOR_CEPH_CONF"] = str(conf)
            print(f"cluster up in {cluster_obj.up_seconds} s (BlueStore on a sparse file in {workdir})", flush=True)
            cluster_obj.pool(VSTOR_POOL, "rados")
            cluster_obj.pool(RBD_POOL, "rbd")
            if a.rados_seconds:
                print("== rados bench", flush=True)
                rb = rados_bench(cluster_obj, RADOS_BENCH_POOL, a.rados_seconds)
            if a.warm_up:
                print("== warm-up (fio rbd on a scratch image, not counted)", flush=True)
                head["warm_up"] = warm_up(cluster_obj, RBD_POOL, a.size_bytes, a.warm_up, a.seq_cap)
                print("   " + ", ".join(f"{k} {v:,} MB/s" for k, v in head["warm_up"].items()), flush=True)
            for n in range(a.rounds):
                if a.rounds > 1:
                    print(f"\n=== round {n + 1} of {a.rounds}", flush=True)
                order = a.target_list[n % len(a.target_list):] + a.target_list[: n % len(a.target_list)]
                rounds.append({})
                for name in order:
                    rounds[-1][name] = {}
                    measure(name, cluster_obj, workdir, a, n + 1, rounds[-1][name])
    except KeyboardInterrupt as exc:
        interrupted = True
        rounds = [{k: v for k, v in r.items() if v} for r in rounds]
        print(f"\ninterrupted ({exc or 'Ctrl-C'}): everything set up was undone", file=sys.stderr, flush=True)
    except BenchError as exc:
        print(f"bench_rados: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        with signals_deferred():
            shutil.rmtree(workdir, ignore_errors=True)
    head["load_after"] = os.getloadavg()
    combined = combine(rounds, JOBS) if rounds else {}
    rat, rat_psync = ratios(rounds), ratios(rounds, "vstor-psync")
    print(f"\nload average before {head['load_before'][0]:.2f}, after {head['load_after'][0]:.2f} "
          f"(1 min; the machine may be shared)")
    print(render(combined, rat, rb, rat_psync))
    if a.json_out:
        doc = {**head, "interrupted": interrupted, "rados_bench": rb, "targets": combined, "ratios": rat,
               "ratios_psync": rat_psync,
               "rounds": rounds}
        Path(a.json_out).write_text(json.dumps(doc, indent=2) + "\n")
    return 130 if interrupted else int(any(t["error"] for t in combined.values()))


if __name__ == "__main__":
    sys.exit(main())
