"""Measure each FUSE tuning choice of vstor against its alternative, in one run.

    .venv/bin/python -m tools.bench_tuning [--size 1G] [--runtime 10]

Every variant is a fresh pool and array started with VSTOR_FUSE_TUNING set (see
vstor/fuse/options.py); the same four fio jobs as tools/bench_fio.py run on its volume, and
each figure is printed with its ratio to the default configuration. The disk under the pool
varies a lot between runs (sequential writes from 0.2 to 0.65 GB/s here), so the variants run
interleaved for --rounds rounds and the median of each figure is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.benchlib.fio import JOBS, FioSettings, run_job
from tools.benchlib.procs import drop_caches

VSTOR = str(Path(sys.executable).parent / "vstor")
VARIANTS = [
    ("default (threads, 1 MiB requests, readahead 1 MiB, blksize = chunk)", ""),
    ("single-threaded FUSE loop", "threads=0"),
    ("max_write 128 KiB", "max_write=131072"),
    ("readahead 128 KiB (kernel default)", "readahead_kb=128"),
    ("st_blksize 4 KiB", "blksize=4096"),
    ("statfs f_bsize 4 KiB", "statfs_bsize=4096"),
    ("a Python thread state per request (as ctypes alone does)", "keep_tstate=0"),
]


def run_variant(base: Path, tuning: str, settings: FioSettings) -> dict[str, float]:
    pool, mnt = base / "pool", base / "mnt"
    env = dict(os.environ, VSTOR_POOL=str(pool), VSTOR_FUSE_TUNING=tuning)
    started = False
    try:
        subprocess.run([VSTOR, "pool", "init", str(pool)], env=env, check=True, capture_output=True)
        subprocess.run([VSTOR, "array", "start", "--mount", str(mnt)], env=env, check=True, capture_output=True)
        started = True
        subprocess.run([VSTOR, "volume", "create", "v", "--size", str(settings.size)], env=env, check=True,
                       capture_output=True)
        out = {}
        for job in JOBS:
            if job.drop_caches_before:
                drop_caches()
            out[job.name] = run_job(settings, job, mnt / "volumes" / "v")["value"]
        stats = json.loads((mnt / "stats.json").read_text())
        out["write_sizes"] = stats["counters"]["write_sizes"]
        out["read_sizes"] = stats["counters"]["read_sizes"]
        return out
    finally:
        if started:
            subprocess.run([VSTOR, "array", "stop"], env=env, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="512M")
    p.add_argument("--runtime", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workdir", default="/var/tmp")
    a = p.parse_args()
    from vstor.units import parse_size

    print("$ " + " ".join([os.path.relpath(sys.executable), *sys.orig_argv[1:]]), flush=True)
    settings = FioSettings(parse_size(a.size), 0, a.runtime, 300, None)
    runs: dict[str, list[dict]] = {name: [] for name, _t in VARIANTS}
    for rnd in range(a.rounds):
        order = VARIANTS[rnd % len(VARIANTS):] + VARIANTS[: rnd % len(VARIANTS)]  # rotate the order
        for name, tuning in order:
            base = Path(tempfile.mkdtemp(prefix="vstor-tune-", dir=a.workdir))
            r = run_variant(base, tuning, settings)
            runs[name].append(r)
            print(f"round {rnd + 1} {name}: " + ", ".join(f"{j.name} {r[j.name]:,} {j.metric}" for j in JOBS),
                  flush=True)
    med = {name: {j.name: statistics.median(r[j.name] for r in rs) for j in JOBS} for name, rs in runs.items()}
    default = med[VARIANTS[0][0]]
    print(f"\nmedians of {a.rounds} rounds and ratio to the default")
    print(f"{'variant':36s} " + "  ".join(f"{j.name:>17}" for j in JOBS))
    for name, _t in VARIANTS:
        cells = [f"{med[name][j.name]:>9,.0f} ({med[name][j.name] / default[j.name]:4.2f})" for j in JOBS]
        print(f"{name[:36]:36s} " + "  ".join(f"{c:>17}" for c in cells))
    for name, rs in runs.items():
        print(f"{name}: write sizes {rs[-1]['write_sizes']}, read sizes {rs[-1]['read_sizes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
