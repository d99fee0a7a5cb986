"""bench_snapshots' command line: its options, the parts run in turn (an error in one is
reported and the others still run), the report and the JSON."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tools import bench_snapshots as package
from tools.benchlib.fio import fio_version
from tools.benchlib.procs import BenchError, install_signal_handlers, run, signals_deferred
from tools.benchlib.targets import VSTOR
from vstor.units import format_size

from .array import Array
from .common import GIB, TIB, say
from .part1 import part1, render1
from .part2 import part2, render2
from .part3 import part3, render3
from .part4 import part4, render4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_snapshots.py", description=package.__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, short runs, 0/20/100 snapshots")
    p.add_argument("--parts", default="1,2,3,4", help="comma list of the parts to run (4 needs 3)")
    p.add_argument("--dir", default="/var/tmp", help="where the temporary directory with the pools goes")
    p.add_argument("--keep-pools", action="store_true",
                   help="leave the pools (arrays stopped) in the temporary directory, for profiling; it is printed")
    p.add_argument("--json-out", help="also write the results as JSON to this file")
    p.add_argument("--reps", type=int, default=20, help="part 1: snapshots timed per group (default 20)")
    p.add_argument("--runtime", type=int, help="part 2: seconds of each fio run (default 20, quick 10)")
    p.add_argument("--interval", type=float, default=0.5, help="part 2: seconds between snapshots (default 0.5)")
    p.add_argument("--io-runtime", type=int, help="part 3: seconds of each fio job (default 10, quick 5)")
    p.add_argument("--io-repeats", type=int, default=3,
                   help="part 3: runs of each fio job per snapshot count, alternated; the median counts (default 3)")
    p.add_argument("--counts", help="part 3: snapshot counts, comma list (default 0,100,1000; quick 0,20,100)")
    p.add_argument("--list-timeout", type=float,
                   help="part 3: give up on 'snapshot list' after this many seconds (default 300, quick 60); "
                        "the daemon is then killed and restarted, so that its computation does not go on "
                        "under the next measurements; later lists predicted (quadratic) to exceed it are skipped")
    p.add_argument("--stall-timeout", type=float,
                   help="parts 2-4: seconds without an answer from the daemon (beyond a fio job's runtime) after "
                        "which it counts as stalled (default 300, quick 60)")
    p.add_argument("--stop-timeout", type=float, default=900, help="part 4: 'array stop' time limit (default 900)")
    p.add_argument("--check-timeout", type=float, default=3600, help="part 4: 'pool check' time limit")
    a = p.parse_args(argv)
    a.part_set = {int(x) for x in a.parts.split(",") if x}
    if not a.part_set <= {1, 2, 3, 4}:
        p.error("--parts takes numbers from 1 to 4")
    if 4 in a.part_set and 3 not in a.part_set:
        p.error("part 4 measures the pool part 3 leaves: add 3 to --parts")
    q = a.quick
    a.sizes = [1 * GIB, 16 * GIB] if q else [1 * GIB, 16 * GIB, 256 * GIB, 1 * TIB]
    a.members = [1, 4, 16]
    a.largest = (16, 16 * GIB) if q else (16, 1 * TIB)
    a.runtime = a.runtime or (10 if q else 20)
    a.io_runtime = a.io_runtime or (5 if q else 10)
    a.count_list = [int(x) for x in (a.counts or ("0,20,100" if q else "0,100,1000")).split(",") if x]
    if a.count_list != sorted(set(a.count_list)) or a.count_list[0] != 0:
        p.error("--counts must start at 0 and increase")
    a.list_timeout = a.list_timeout or (60.0 if q else 300.0)
    a.stall_timeout = a.stall_timeout or (60.0 if q else 300.0)
    return a


def parts34(a: argparse.Namespace, workdir: Path, results: dict[str, Any], errors: dict[str, str]) -> None:
    say(f"\n== part 3: random I/O with {', '.join(map(str, a.count_list))} snapshots")
    arr = Array("p3", workdir, 1 * GIB)
    arr.keep = a.keep_pools
    with arr as image:
        if not run_part("part3", lambda: part3(a, arr, image, results["part3"]), errors):
            if 4 in a.part_set:
                errors["part4"] = "skipped: part 3 failed"
            return
        if results["part3"].get("stalled"):
            errors["part3"] = results["part3"]["stalled"]
        if 4 in a.part_set:
            run_part("part4", lambda: part4(a, arr, results["part4"], results["part3"]["snapshots"]), errors)


def run_part(name: str, fn: Callable[[], None], errors: dict[str, str]) -> bool:
    """Run one part; an error is recorded and reported, and the other parts still run."""
    try:
        fn()
        return True
    except Exception as exc:
        errors[name] = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
        say(f"   {name} FAILED: {errors[name]}")
        return False


def header(a: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    fs = run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(workdir)], check=False).stdout.strip()
    return {"command": shlex.join(sys.orig_argv), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "kernel": platform.release(), "cpus": os.cpu_count(), "fio": fio_version(), "workdir": str(workdir),
            "workdir_fs": fs, "quick": a.quick, "parts": sorted(a.part_set), "reps": a.reps,
            "sizes": a.sizes, "members": a.members, "largest": list(a.largest), "runtime_s": a.runtime,
            "interval_s": a.interval, "io_runtime_s": a.io_runtime, "counts": a.count_list,
            "list_timeout_s": a.list_timeout, "stall_timeout_s": a.stall_timeout, "stop_timeout_s": a.stop_timeout,
            "check_timeout_s": a.check_timeout}


def preflight(a: argparse.Namespace) -> None:
    if os.geteuid() != 0 and a.part_set - {1}:
        raise SystemExit("bench_snapshots: parts 2-4 need root (FUSE mounts)")
    missing = [c for c in ("fio", "fusermount3") if shutil.which(c) is None]
    if missing and a.part_set - {1}:
        raise SystemExit(f"bench_snapshots: missing commands: {', '.join(missing)}")
    if not VSTOR.exists():
        raise SystemExit(f"bench_snapshots: {VSTOR} not found (install the project in the venv)")
    free = shutil.disk_usage(a.dir).free
    if free < 8 * GIB:
        raise SystemExit(f"bench_snapshots: {a.dir} has {format_size(free)} free, needs about 8G")


def main(argv: list[str] | None = None) -> int:
    print("$ " + shlex.join(sys.orig_argv), flush=True)
    a = parse_args(argv)
    preflight(a)
    install_signal_handlers()
    results: dict[str, Any] = {"part1": {}, "part2": {}, "part3": {}, "part4": {}}
    errors: dict[str, str] = {}
    h: dict[str, Any] = {}
    interrupted = False
    workdir = Path(tempfile.mkdtemp(prefix="vstor-snapbench-", dir=a.dir))
    try:
        h = header(a, workdir)
        say(f"{h['date']}  kernel {h['kernel']}, {h['cpus']} CPUs, {h['fio']}; workdir {workdir} ({h['workdir_fs']})"
            + ("; --quick" if a.quick else ""))
        if 1 in a.part_set:
            run_part("part1", lambda: part1(a, workdir, results["part1"]), errors)
        if 2 in a.part_set:
            run_part("part2", lambda: part2(a, workdir, results["part2"]), errors)
        if 3 in a.part_set:
            parts34(a, workdir, results, errors)
    except KeyboardInterrupt as exc:
        interrupted = True
        print(f"\ninterrupted ({str(exc) or 'Ctrl-C'}): everything set up was undone", file=sys.stderr, flush=True)
    finally:
        with signals_deferred():
            if a.keep_pools and not interrupted:
                say(f"pools kept in {workdir} (remove it when done)")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    report = []
    if results["part1"].get("rows"):
        report.append(render1(results["part1"]))
    if results["part2"].get("baseline"):
        report.append(render2(results["part2"], a))
    if results["part3"].get("rows"):
        report.append(render3(results["part3"], a))
    if results["part4"]:
        rows3 = results["part3"].get("rows") or [{}]
        report.append(render4(results["part4"], rows3[0].get("rss_kib")))
    report += [f"{name} FAILED: {err}" for name, err in errors.items()]
    print("\n" + "\n\n".join(report), flush=True)
    if a.json_out:
        doc = {**h, "interrupted": interrupted, "errors": errors, **results}
        Path(a.json_out).write_text(json.dumps(doc, indent=2) + "\n")
    return 130 if interrupted else int(bool(errors))
