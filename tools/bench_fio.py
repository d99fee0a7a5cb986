"""fio benchmark of vstor against a bare FUSE passthrough, the raw file and nbdkit+nbdfuse.

    .venv/bin/python tools/bench_fio.py [--size 2G] [--phase fresh|aged|mixed] [--all | --vstor-variants plain,lz4,aes]
                                        [--targets raw,passthrough,nbdfuse,vstor] [--rounds N] [--json-out FILE]
                                        [--segment-sizes 64M,256M]

Each target is a file of --size bytes; the same four fio jobs run on each, one target at a time
(set up, measured, torn down): 1 MiB sequential write of the whole file then fdatasync (MB/s),
1 MiB sequential read (MB/s), 4 KiB random write at QD1 then fdatasync (IOPS), 4 KiB random read
at QD1 (IOPS). The page cache is dropped before each read job. For vstor it also reports the
daemon's RSS after the write (extrapolated per TiB) and the journal replay after kill -9.
With --rounds N the whole list runs N times, because this VM's disk drifts between minutes: each
round's ratios compare targets measured back to back, and the report gives their median (and
each target's median figures). Round N starts at the Nth target (--order rotate), because a
target's place in the round moved its sequential read by up to 0.16 of the ratio.
Needs root (FUSE mounts, /proc/sys/vm/drop_caches). Everything lives under a temporary directory
in --workdir and is removed, and every mount and server undone, on success, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tools.benchlib import options
from tools.benchlib.counters import device_written, disk_of, with_server_cpu
from tools.benchlib.fio import JOBS, PHASES, FioSettings, Job, direct_io_works, fio_version, run_job
from tools.benchlib.hostmem import steady_memory
from tools.benchlib.mixed import MIXED_JOBS, MIXED_RUNTIME, mixed_report, proc_io, run_mixed, write_amplification
from tools.benchlib.procs import BenchError, drop_caches, install_signal_handlers, run, signals_deferred
from tools.benchlib.report import combine, cpu_note, paired_ratios, render
from tools.benchlib.targets import VSTOR_VARIANTS, Nbdfuse, Passthrough, Raw, Target, Vstor, vstor_available
from tools.benchlib.vcpu import idle_polling
from vstor.errors import UsageError
from vstor.store.superblock import MAX_SEGMENT, MIN_SEGMENT
from vstor.units import format_size, parse_size

ALL_TARGETS = ("raw", "passthrough", "nbdfuse", "vstor")
EXTRA_TARGETS = ("passthrough-copy",)  # only when named: the passthrough with mfusepy's stock read path
ALL_PHASES = {**PHASES, "mixed": (JOBS[0], *MIXED_JOBS)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="2G", help="size of every target (default 2G)")
    p.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma list, in run order")
    p.add_argument("--vstor-variants", default="plain", help="comma list of plain,lz4,aes (default plain)")
    p.add_argument("--all", action="store_true", help="all vstor variants: plain,lz4,aes")
    p.add_argument("--segment-sizes", default="",
                   help="comma list of journal segment sizes: one vstor target per variant and size, "
                        "named vstor-VARIANT-SIZE (default: the pool's default only)")
    p.add_argument("--direct", type=int, choices=(0, 1), default=0,
                   help="fio direct= (default 0: buffered, caches dropped before reads)")
    p.add_argument("--phase", choices=sorted(ALL_PHASES), default="fresh",
                   help="fresh: the four jobs on a newly written file (default); aged: written, then "
                        "overwritten by 4 KiB random writes for 12 s, then read at once (cold and warm) and "
                        "after 60 s idle (issue 25); mixed: written, then fio 70/30 randrw with an fsync "
                        "every 32 writes at 4 KiB and at 64 KiB (IOPS, p99, seconds without a completion, "
                        "write amplification; issue 25)")
    p.add_argument("--jobs", default="",
                   help="comma list of the phase's jobs to run (default all; seq-write always runs: it lays "
                        "the file out)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every target this many times (see --order) and report per-round ratios' "
                        "median (default 1)")
    p.add_argument("--order", choices=("rotate", "fixed"), default="rotate",
                   help="rotate: round N starts at the Nth target, so no target always runs in the same "
                        "place (default); fixed: every round runs --targets in the order given")
    p.add_argument("--runtime", type=int, default=None,
                   help=f"seconds of each random job (default 20; {MIXED_RUNTIME} for the mixed phase's jobs)")
    p.add_argument("--read-repeats", type=int, default=3,
                   help="run each read job and the random write this many times (caches dropped before "
                        "reads) and report the median")
    p.add_argument("--seq-cap", type=int, default=300, help="time cap of each sequential pass (default 300)")
    p.add_argument("--compress-percentage", type=int, default=None,
                   help="fio buffer_compress_percentage for writes (default: incompressible data)")
    p.add_argument("--passthrough-stats", action="store_true",
                   help="report the request sizes the passthrough received")
    options.add_common(p)
    a = p.parse_args(argv)
    a.size_bytes = options.size(p, a.size)
    a.target_list = [t for t in a.targets.split(",") if t]
    try:
        a.segment_list = [parse_size(x, "segment size") for x in a.segment_sizes.split(",") if x]
    except UsageError as e:
        p.error(str(e))
    for seg in a.segment_list:
        if not MIN_SEGMENT <= seg <= MAX_SEGMENT:
            p.error(f"invalid segment size {format_size(seg)}: use {format_size(MIN_SEGMENT)} to "
                    f"{format_size(MAX_SEGMENT)}")
    if a.runtime is None:
        a.runtime = MIXED_RUNTIME if a.phase == "mixed" else 20
    phase = ALL_PHASES[a.phase]
    names = {j.name for j in phase}
    wanted = [j for j in a.jobs.split(",") if j] or sorted(names)
    for j in wanted:
        if j not in names:
            p.error(f"unknown job {j!r} in the {a.phase} phase: choose from {', '.join(sorted(names))}")
    a.job_list = tuple(j for j in phase if j.name in wanted or j is phase[0])
    a.variant_list = list(VSTOR_VARIANTS) if a.all else [v for v in a.vstor_variants.split(",") if v]
    for t in a.target_list:
        if t not in ALL_TARGETS + EXTRA_TARGETS:
            p.error(f"unknown target {t!r}: choose from {', '.join(ALL_TARGETS + EXTRA_TARGETS)}")
    for v in a.variant_list:
        if v not in VSTOR_VARIANTS:
            p.error(f"unknown vstor variant {v!r}: choose from {', '.join(VSTOR_VARIANTS)}")
    return a


def make_targets(a: argparse.Namespace, workdir: Path) -> list[Target]:
    targets: list[Target] = []
    for t in a.target_list:
        if t == "raw":
            targets.append(Raw("raw", workdir, a.size_bytes))
        elif t == "passthrough":
            targets.append(Passthrough("passthrough", workdir, a.size_bytes, stats=a.passthrough_stats))
        elif t == "passthrough-copy":
            targets.append(Passthrough(t, workdir, a.size_bytes, stats=a.passthrough_stats, copy_read=True))
        elif t == "nbdfuse":
            targets.append(Nbdfuse("nbdfuse", workdir, a.size_bytes))
        else:
            for v in a.variant_list:
                if not a.segment_list:
                    targets.append(Vstor(f"vstor-{v}", workdir, a.size_bytes, v))
                for seg in a.segment_list:
                    targets.append(Vstor(f"vstor-{v}-{format_size(seg)}", workdir, a.size_bytes, v,
                                         ["--segment-size", str(seg)]))
    return targets


def measure(target: Target, settings: FioSettings, res: dict[str, Any], read_repeats: int = 1,
            jobs: tuple | list = JOBS) -> None:
    """Set up, run the jobs, tear down; fills res as it goes (an interruption keeps what was measured)."""
    res.update({"kind": target.kind, "jobs": {}, "extras": target.extras, "error": None})
    print(f"== {target.name}", flush=True)
    try:
        with target as path:
            if settings.direct and not direct_io_works(path):
                raise BenchError(f"O_DIRECT does not work on {path}")
            for job in jobs:
                if job.idle_before:
                    print(f"   idle {job.idle_before} s (background work may run)", flush=True)
                    time.sleep(job.idle_before)
                target.before_job(job.name)
                repeats = 1 if job in MIXED_JOBS else read_repeats if job.direction == "read" or job.time_based else 1
                runs = []
                for _ in range(repeats):  # reads and random writes vary run to run here: take the median
                    if job.drop_caches_before:
                        drop_caches()
                    else:  # a write job must not pay for what earlier jobs or targets left dirty
                        os.sync()
                    if job in MIXED_JOBS:
                        runs.append(with_server_cpu(target.pid, run_mixed_measured, target, settings, job, path))
                    else:
                        runs.append(with_server_cpu(target.pid, run_job, settings, job, path))
                r = sorted(runs, key=lambda x: x["value"])[len(runs) // 2]
                if repeats > 1:
                    r["values"] = [x["value"] for x in runs]
                res["jobs"][job.name] = r
                print(f"   {job.name:<10} {r['value']:>10,} {job.metric:<4}  lat mean {r['lat_mean_us']} us, "
                      f"p99 {r['clat_p99_us']} us, {r['runtime_s']:.1f} s{cpu_note(r)}", flush=True)
                target.after_job(job.name, r)
            target.finish()
    except Exception as exc:  # one target failing (cleaned up by its with) must not stop the others
        res["error"] = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
        print(f"   FAILED: {res['error']}", flush=True)


def run_mixed_measured(target: Target, settings: FioSettings, job: Job, path: Path) -> dict[str, Any]:
    """A mixed job, with what the disk under the targets wrote meanwhile (the job, then a sync:
    nothing else runs) and, for vstor, what the FUSE server dirtied and its journal appended."""
    # /proc/PID/io counts the pages a process dirties, a whole large folio at a time: the
    # passthrough writes in place (WA of 240 at 4 KiB by that count), and vstor's pwrites into
    # reused segment files count folios too. The device's own count is what reached the disk.
    disk = disk_of(target.dir)
    os.sync()
    d0 = device_written(disk)
    io0 = proc_io(target.pid) if isinstance(target, Vstor) and target.pid else None
    j0 = target.journal_bytes() if isinstance(target, Vstor) else None
    c0 = target.counters() if isinstance(target, Vstor) else None
    r = run_mixed(settings, job, path, target.dir)
    os.sync()
    r["device_write_bytes"] = device_written(disk) - d0
    r["wa_device"] = write_amplification(r["device_write_bytes"], r["bytes"])
    if io0 is not None and target.pid:
        io1 = proc_io(target.pid)
        dirtied = ((io1["write_bytes"] - io0["write_bytes"])
                   - (io1["cancelled_write_bytes"] - io0["cancelled_write_bytes"]))
        r["server_disk_write_bytes"] = dirtied
        r["wa_disk"] = write_amplification(dirtied, r["bytes"])
    if j0 is not None and isinstance(target, Vstor):
        appended, prepared = target.journal_bytes()
        r["journal_appended_bytes"] = appended - j0[0]
        r["wa_journal"] = write_amplification(r["journal_appended_bytes"], r["bytes"])
        r["prepared_bytes"] = prepared - j0[1]
    if c0 is not None and isinstance(target, Vstor):
        c1 = target.counters()  # what the maintenance loop rewrote meanwhile (all within the journal's appends)
        r["maintenance_bytes"] = {k: c1.get(k, 0) - c0.get(k, 0)
                                  for k in ("relocated_bytes", "compacted_bytes", "defrag_bytes")}
    return r


def header(a: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    fs = run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(workdir)], check=False).stdout.strip()
    fuse = run(["fusermount3", "--version"], check=False).stdout.strip().split()[-1:]
    return {
        "command": shlex.join(sys.orig_argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "kernel": platform.release(), "cpus": os.cpu_count(), "fio": fio_version(),
        "libfuse": fuse[0] if fuse else "?", "workdir": str(workdir), "workdir_fs": fs,
        "size": a.size_bytes, "direct": a.direct, "random_runtime_s": a.runtime,
        "vstor_variants": a.variant_list if "vstor" in a.target_list else [],
        "compress_percentage": a.compress_percentage, "phase": a.phase,
    }


def print_header(h: dict[str, Any]) -> None:
    cache = ("direct=1 (O_DIRECT on the target; FUSE backends still use the host page cache)" if h["direct"]
             else "direct=0 (buffered; echo 3 > /proc/sys/vm/drop_caches before each read job, which "
                  "empties both the FUSE file's page cache and its backing file's; sync before each write job)")
    print(f"$ {h['command']}")
    print(f"{h['date']}  kernel {h['kernel']}, {h['cpus']} CPUs, {h['fio']}, libfuse {h['libfuse']}")
    print(f"workdir {h['workdir']} ({h['workdir_fs']}), {format_size(h['size'])} per target")
    print(f"fio: ioengine=psync iodepth=1 numjobs=1, {cache}")
    print(h["host_memory"])
    print(h["vcpu_idle"])
    print(f"jobs ({h['phase']} phase): {', '.join(f'{j.name} bs={j.bs}' for j in ALL_PHASES[h['phase']])}; random "
          f"jobs {h['random_runtime_s']} s time-based" + {"aged": " (age: 12 s)", "mixed": (
              " (randrw, rwmixread=70, fsync=32, iops logged per second)")}.get(h["phase"], "")
          + "; write jobs end with fdatasync (end_fsync=1)", flush=True)


def preflight(a: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench_fio: needs root (FUSE mounts, drop_caches)")
    needed = ["fio", "fusermount3"] + (["nbdfuse", "nbdkit"] if "nbdfuse" in a.target_list else [])
    missing = [c for c in needed if shutil.which(c) is None]
    if missing:
        raise SystemExit(f"bench_fio: missing commands: {', '.join(missing)} (make setup)")
    free = shutil.disk_usage(a.workdir).free
    if free < 2 * a.size_bytes + (1 << 30):
        raise SystemExit(f"bench_fio: {a.workdir} has {format_size(free)} free, needs about "
                         f"{format_size(2 * a.size_bytes + (1 << 30))}")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    preflight(a)
    install_signal_handlers()
    settings = FioSettings(a.size_bytes, a.direct, a.runtime, a.seq_cap, a.compress_percentage)
    workdir = Path(tempfile.mkdtemp(prefix="vstor-bench-", dir=a.workdir))
    rounds: list[dict[str, dict[str, Any]]] = []
    h: dict[str, Any] = {}
    interrupted = False
    memory = contextlib.ExitStack()
    try:
        h = header(a, workdir)
        h["host_memory"] = memory.enter_context(steady_memory(not a.keep_page_reporting))
        h["vcpu_idle"] = idle_polling()
        print_header(h)
        unavailable = vstor_available() if "vstor" in a.target_list else None
        for n in range(a.rounds):
            if a.rounds > 1:
                print(f"\n=== round {n + 1} of {a.rounds}", flush=True)
            results: dict[str, dict[str, Any]] = {}
            rounds.append(results)
            targets = make_targets(a, workdir)
            if a.order == "rotate" and targets:
                targets = targets[n % len(targets):] + targets[: n % len(targets)]
            for target in targets:
                if isinstance(target, Vstor) and unavailable:
                    results[target.name] = {"kind": "vstor", "jobs": {}, "extras": {},
                                            "error": f"skipped: vstor CLI unavailable ({unavailable})"}
                    continue
                results[target.name] = {}
                measure(target, settings, results[target.name], a.read_repeats, a.job_list)
    except KeyboardInterrupt as exc:
        interrupted = True
        rounds = [{name: r for name, r in results.items() if r} for results in rounds]
        rounds = [r for r in rounds if r]
        why = str(exc) or "Ctrl-C"
        print(f"\ninterrupted ({why}): everything set up was undone", file=sys.stderr, flush=True)
    finally:
        with signals_deferred():
            shutil.rmtree(workdir, ignore_errors=True)
            memory.close()
    combined = combine(rounds, a.job_list) if rounds else {}
    rat = paired_ratios(rounds, a.job_list)
    print()
    if a.rounds > 1:
        print(f"figures: per job, the median over {len(rounds)} rounds; ratios: the median of each round's ratio")
    print(render(combined, rat, a.job_list))
    if a.phase == "mixed":
        print()
        print(mixed_report(combined, rat, a.job_list))
    if a.json_out:
        doc = {**h, "interrupted": interrupted, "targets": combined, "ratios": rat, "rounds": rounds}
        Path(a.json_out).write_text(json.dumps(doc, indent=2) + "\n")
    failed = interrupted or any(r["error"] for r in combined.values())
    return 130 if interrupted else int(failed)


if __name__ == "__main__":
    sys.exit(main())
