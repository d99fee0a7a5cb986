"""Snapshot costs: creation latency, write pause, I/O, listing, check and start-up with many snapshots.

    .venv/bin/python -m tools.bench_snapshots [--quick] [--parts 1,2,3,4] [--dir DIR] [--json-out FILE]

Part 1 (in-process, Store API, no FUSE): snapshots.create() end to end and the store-lock hold
  (stats snapshot_pause_us) against volume size (1 GiB .. 1 TiB, one member) and member count
  (1, 4, 16 members of 1 GiB, and 16 x 1 TiB). Every volume is "touched": one 4 KiB write per
  512 MiB, i.e. one map leaf per 512 MiB, the worst case (a snapshot copies one pointer per leaf).
Part 2 (real array): fio 4 KiB random writes, psync QD1 direct=1, on a prefilled 1 GiB volume of
  a group: without snapshots, with `vstor volume list` every 0.5 s (control: the same CLI process
  start-ups, no snapshot), and while `vstor snapshot create G` runs every 0.5 s; fio's
  completion-latency percentiles, and the daemon's snapshot_pause_us from DIR/stats.json.
Part 3 (real array): a 1 GiB volume filled with 1 MiB writes, then aged by 4 KiB random writes
  (2 x the job runtime, so that fragmentation is not what differs); with 0, 100 and 1000 snapshots
  (64 KiB of random 4 KiB overwrites before each, so the leaves diverge), fio 4 KiB randread and
  randwrite at QD1 (each run --io-repeats times, alternated; the median counts), their ratio to the
  0-snapshot run, and the time of `vstor snapshot list G --json`.
Part 4: after part 3, `vstor array stop`, `vstor pool check` and `vstor array start` timed, and
  the daemon's VmRSS with all those snapshots.

--quick: sizes up to 16 GiB, 10 s fio (5 s per part-3 job), 0/20/100 snapshots. Needs root
(FUSE mounts). Everything lives in a temporary directory under --dir, removed at the end; every
array is stopped and every mount undone, also on error or Ctrl-C.

A daemon that stops answering (a fio job or a snapshot not done --stall-timeout seconds late) is
reported as STALLED with what its busy threads were doing (py-spy dump), then killed; part 3 ends
there and part 4 measures check and start-up with the snapshots taken so far. This process never
holds a FUSE file open itself (fio, cat and a child process do the I/O), so it cannot hang with it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tools.benchlib.fio import direct_io_works, fio_version
from tools.benchlib.procs import (
    BenchError,
    best_effort,
    install_signal_handlers,
    rss_kib,
    run,
    signals_deferred,
    stop_process,
    unmount,
    warn,
)
from tools.benchlib.targets import VSTOR, Vstor
from vstor.control.lock import PoolLock, daemon_pid
from vstor.control.service import PoolService
from vstor.store import snapshots
from vstor.store.store import Store
from vstor.store.superblock import init_pool, layout
from vstor.units import format_size

MIB, GIB, TIB = 1 << 20, 1 << 30, 1 << 40
LEAF_SPAN = 512 * MIB  # 1024 slots of 512 KiB chunks: one map leaf
GROUP = "G"
PERCENTILES = "50:99:99.9:100"
PAUSE_TARGET_US = 10_000  # issue target: snapshot pause p99 < 10 ms
RATIO_TARGET = 0.10  # I/O within 10% of the 0-snapshot figure
LIST_TARGET_S = 1.0  # snapshot list with 1000 snapshots under 1 s


# -- settings -----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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


# -- small helpers ------------------------------------------------------------------------------
def ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:,.2f}"


def num(v: float | None, fmt: str = ",.0f") -> str:
    return "-" if v is None else format(v, fmt)


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def summary_us(seconds: list[float]) -> dict[str, Any]:
    """median, p99 and max of durations given in seconds, in microseconds."""
    if not seconds:
        return {"count": 0, "median_us": None, "p99_us": None, "max_us": None}
    s = sorted(seconds)
    return {"count": len(s), "median_us": round(statistics.median(s) * 1e6),
            "p99_us": round(s[min(len(s) - 1, len(s) * 99 // 100)] * 1e6), "max_us": round(s[-1] * 1e6)}


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def say(msg: str) -> None:
    print(msg, flush=True)


# -- fio ----------------------------------------------------------------------------------------
class Stalled(BenchError):
    """The daemon did not answer within the stall timeout."""


# Children that would not die: a process waiting for a FUSE request the daemon has already taken
# cannot end (not even by SIGKILL) until the daemon answers or dies. Reaped after the daemon is killed.
ORPHANS: list[subprocess.Popen[Any]] = []


def finish(proc: subprocess.Popen[Any], grace: float = 10) -> None:
    """Make sure proc has ended: SIGINT, then SIGKILL; if it is stuck in a FUSE request, park it in ORPHANS."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGINT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            pass
    ORPHANS.append(proc)


def reap_orphans(timeout: float = 15) -> None:
    while ORPHANS:
        proc = ORPHANS.pop()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            warn(f"pid {proc.pid} ({shlex.join(map(str, proc.args))[:80]}) still stuck")


def read_bounded(path: Path, timeout: float) -> str:
    """A file of the FUSE mount, read by a child (cat): a stalled daemon cannot block us."""
    proc = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise Stalled(f"reading {path}: no answer after {timeout:.0f} s") from exc
    finally:
        finish(proc, grace=2)
    if proc.returncode:
        raise BenchError(f"cat {path}: {err.strip()}")
    return out


def daemon_stack(pid: int | None) -> str:
    """py-spy dump of the daemon (what it is busy with), or '' if py-spy is not there."""
    spy = Path(sys.executable).parent / "py-spy"
    if pid is None or not spy.exists():
        return ""
    try:
        return run([str(spy), "dump", "--pid", str(pid)], timeout=60, check=False).stdout
    except BenchError:
        return ""


def busy_threads(dump: str, frames: int = 4) -> list[str]:
    """The active threads of a py-spy dump, each as its innermost frames: 'name: f1 < f2 < ...'."""
    out: list[str] = []
    current: list[str] | None = None
    for line in dump.splitlines():
        if line.startswith("Thread "):
            current = None
            if "(active" in line:
                current = [line.split('"')[1] if '"' in line else line.split()[1]]
                out.append("")
        elif current is not None and line.startswith("    ") and len(current) <= frames:
            current.append(line.strip())
            out[-1] = f"{current[0]}: " + " < ".join(current[1:])
    return [x for x in out if x]


def fio(path: Path, name: str, rw: str, bs: str, size: int, runtime: int | None, stall: float,
        extra: Sequence[str] = ()) -> dict[str, Any]:
    """One fio job (psync, QD1, direct=1) on path; IOPS and completion-latency percentiles in us.
    Raises Stalled if it has not finished stall seconds after its runtime (no answer from the daemon)."""
    cmd = ["fio", f"--name={name}", f"--filename={path}", f"--rw={rw}", f"--bs={bs}", f"--size={size}",
           "--ioengine=psync", "--iodepth=1", "--numjobs=1", "--direct=1", "--allow_file_create=0",
           f"--percentile_list={PERCENTILES}", "--output-format=json"]
    cmd += ["--time_based=1", f"--runtime={runtime}"] if runtime else ["--runtime=900"]
    cmd += list(extra)
    timeout = (runtime or 900) + stall
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise Stalled(f"fio {name}: no result after {timeout:.0f} s") from exc
    finally:  # fio must be gone (its file closed) before any teardown, or parked until the daemon dies
        finish(proc)
    try:
        fj = json.loads(stdout[stdout.index("{"):])["jobs"][0]
    except (ValueError, KeyError, IndexError) as exc:
        raise BenchError(f"fio {name} failed ({proc.returncode}): {stderr.strip()[-500:]}") from exc
    if proc.returncode != 0 or fj.get("error"):
        raise BenchError(f"fio {name}: exit {proc.returncode}, job error {fj.get('error')}: {stderr.strip()[-500:]}")
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


# -- part 1 -------------------------------------------------------------------------------------
def touch(store: Store, vid: int, size: int, block: bytes) -> int:
    """One 4 KiB write per 512 MiB region: one map leaf each. Returns the writes done."""
    n = 0
    for off in range(0, size, LEAF_SPAN):
        store.write(vid, off, block)
        n += 1
    return n


def reset_pauses(store: Store) -> None:
    pauses = getattr(store.stats, "snapshot_pauses", None)
    if pauses is not None:
        with store.stats.lock:
            pauses.clear()


def part1(a: argparse.Namespace, workdir: Path, out: dict[str, Any]) -> None:
    say(f"\n== part 1: snapshot creation in-process, {a.reps} snapshots per group")
    pool = str(workdir / "p1-pool")
    init_pool(pool)
    with contextlib.ExitStack() as stack:
        lock = PoolLock(pool)
        lock.acquire("bench_snapshots")
        stack.callback(best_effort("release the part 1 pool lock", lock.release))
        store = Store.open(pool)
        stack.callback(best_effort("close the part 1 store", lambda: store.close(checkpoint=False)))
        svc = PoolService(store)
        block = os.urandom(4096)
        series: list[tuple[str, str, int, int]] = [("size", f"s{format_size(s)}", 1, s) for s in a.sizes]
        series += [("members", f"m{n}x1G", n, 1 * GIB) for n in a.members]
        n, size = a.largest
        series.append(("largest", f"m{n}x{format_size(size)}", n, size))
        rows = out["rows"] = []
        for kind, group, members, size in series:
            t0 = time.perf_counter()
            vids = []
            writes = 0
            for i in range(members):
                vol = store.create_volume(f"{group}-v{i}", size)
                vids.append(vol.id)
                writes += touch(store, vol.id, size, block)
            svc.op_group_create(group, [f"{group}-v{i}" for i in range(members)])
            store.sync()
            setup_s = time.perf_counter() - t0
            leaves = sum(len(store.state.maps[v].leaves) for v in vids)
            reset_pauses(store)
            times = []
            names = []
            for _ in range(a.reps):
                t = time.perf_counter()
                names.append(snapshots.create(store, group)["name"])
                times.append(time.perf_counter() - t)
            pause = store.stats.as_dict().get("snapshot_pause_us")
            for name in names:  # untimed: the next group starts with the same catalog size
                snapshots.delete(store, group, name)
            row = {"series": kind, "group": group, "members": members, "member_size": size, "leaves": leaves,
                   "touch_writes": writes, "setup_s": round(setup_s, 2), "create": summary_us(times),
                   "pause_us": pause}
            rows.append(row)
            say(f"   {group:<10} {members:>2} x {format_size(size):>5}, {leaves:>6} leaves: create median "
                f"{ms(row['create']['median_us'])} ms, max {ms(row['create']['max_us'])} ms; lock held p50 "
                f"{ms(pause and pause['p50'])} ms, max {ms(pause and pause['max'])} ms "
                f"(setup {setup_s:.1f} s)")


def render1(out: dict[str, Any]) -> str:
    rows = []
    for r in out.get("rows", []):
        c, p = r["create"], r["pause_us"] or {}
        rows.append([r["series"], r["group"], str(r["members"]), format_size(r["member_size"]), f"{r['leaves']:,}",
                     ms(c["median_us"]), ms(c["max_us"]), ms(p.get("p50")), ms(p.get("p99")), ms(p.get("max"))])
    head = ["series", "group", "members", "size", "leaves", "create med ms", "create max ms",
            "lock p50 ms", "lock p99 ms", "lock max ms"]
    return ("PART 1: snapshot creation vs volume size and member count (in-process Store API; each volume has "
            "one 4 KiB write per 512 MiB = one map leaf per 512 MiB)\n"
            "create = snapshots.create() end to end (includes the journal fsync); lock = how long the store "
            "lock was held (stats snapshot_pause_us), the pause writes see\n" + table(head, rows))


# -- part 2 -------------------------------------------------------------------------------------
class CliLoop(threading.Thread):
    """Runs a vstor command every interval seconds until stopped: `vstor snapshot create G` (the CLI, as
    an admin would), or as a control `vstor volume list`, the same process start-up without a snapshot."""

    def __init__(self, arr: Array, interval: float, timeout: float, snapshot: bool = True) -> None:
        super().__init__(name="cli-loop", daemon=True)
        self.timeout = timeout
        args = ["snapshot", "create", GROUP] if snapshot else ["volume", "list"]
        self.cmd = [str(VSTOR), *args, "--pool", str(arr.pool)]
        self.interval = interval
        self.halt = threading.Event()
        self.times: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        due = time.monotonic() + self.interval
        while not self.halt.wait(max(0.0, due - time.monotonic())):
            t0 = time.monotonic()
            try:
                res = subprocess.run(self.cmd, capture_output=True, text=True, timeout=self.timeout)
                if res.returncode == 0:
                    self.times.append(time.monotonic() - t0)
                else:
                    self.errors.append((res.stderr or res.stdout).strip()[-300:])
            except subprocess.TimeoutExpired:
                self.errors.append(f"no answer after {self.timeout:.0f} s")
            due += self.interval


def stall_error(arr: Array, exc: BenchError) -> BenchError:
    """A Stalled error, completed with what the daemon is busy with (py-spy), for the report."""
    busy = busy_threads(daemon_stack(arr.pid))
    return BenchError(f"{exc}: the daemon stalled" + (f"; busy threads: {' | '.join(busy)}" if busy else ""))


def part2(a: argparse.Namespace, workdir: Path, out: dict[str, Any]) -> None:
    say(f"\n== part 2: fio 4 KiB randwrite QD1 for {a.runtime} s, without and with a snapshot every {a.interval} s")
    arr = Array("p2", workdir, 1 * GIB)
    with arr as image:
        try:
            _part2(a, arr, image, out)
        except Stalled as exc:
            err = stall_error(arr, exc)
            arr.kill()  # frees fio and the snapshot loop
            raise err from exc


def _part2(a: argparse.Namespace, arr: Array, image: Path, out: dict[str, Any]) -> None:
    out["fill_s"] = round(fill(image, 1 * GIB, a.stall_timeout), 1)
    say(f"   prefilled the 1 GiB volume with 1 MiB writes in {out['fill_s']} s")
    base = out["baseline"] = fio_cpu(arr, image, "randwrite-nosnap", "randwrite", a.runtime, a.stall_timeout)
    say(f"   no snapshots:  {_lat_line(base)}")
    for key, snapshot in (("cli_control", False), ("with_snapshots", True)):
        loop = CliLoop(arr, a.interval, a.stall_timeout, snapshot)
        loop.start()
        try:
            r = out[key] = fio_cpu(arr, image, f"randwrite-{key}", "randwrite", a.runtime, a.stall_timeout)
        finally:
            loop.halt.set()
            loop.join()
        say(f"   {'snapshotting: ' if snapshot else 'CLI control:  '} {_lat_line(r)}")
        if not snapshot:
            out["cli_control"]["cli_runs"] = len(loop.times)
            out["cli_control"]["cli_round_trip"] = summary_us(loop.times)
    counters = arr.stats(a.stall_timeout)
    out["snapshots_taken"] = len(loop.times)
    out["snapshot_failures"] = len(loop.errors)
    out["snapshot_errors"] = loop.errors[:3]
    out["cli_create"] = summary_us(loop.times)
    out["daemon_snapshots_taken"] = counters.get("snapshots_taken")
    pause = out["daemon_pause_us"] = pause_stats(counters)
    out["pause_target_met"] = None if not pause or not pause["count"] else pause["p99"] < PAUSE_TARGET_US
    say(f"   {len(loop.times)} snapshots taken ({len(loop.errors)} failed); daemon lock hold "
        f"p99 {ms(pause and pause['p99'])} ms, max {ms(pause and pause['max'])} ms")


def _lat_line(r: dict[str, Any]) -> str:
    return (f"{r['iops']:>6,} IOPS, p50 {r['p50_us']} us, p99 {r['p99_us']} us, p99.9 {r['p99_9_us']} us, "
            f"max {r['max_us']:,} us")


def render2(out: dict[str, Any], a: argparse.Namespace) -> str:
    rows = []
    every = f"every {a.interval:g} s"
    for label, key in (("no snapshots", "baseline"), (f"control: volume list {every}", "cli_control"),
                       (f"snapshot create {every}", "with_snapshots")):
        r = out.get(key)
        if r:
            rows.append([label, f"{r['iops']:,}", num(r["p50_us"]), num(r["p99_us"]), num(r["p99_9_us"]),
                         num(r["max_us"]), num(r["clat_mean_us"], ",.1f"), num(r.get("daemon_cpu_pct"))])
    lines = [f"PART 2: write pause seen by fio: 4 KiB randwrite, psync QD1 direct=1, {a.runtime} s each, on a "
             "prefilled 1 GiB volume of a group (completion latencies in us; daemon CPU in % of one core). The "
             "control run starts the same CLI processes without taking snapshots (their start-up competes for "
             "the CPUs too)",
             table(["run (vstor CLI in a loop)", "IOPS", "p50", "p99", "p99.9", "max", "mean", "daemon CPU%"], rows)]
    if "snapshots_taken" in out:
        c, p = out["cli_create"], out.get("daemon_pause_us") or {}
        verdict = {True: "met", False: "NOT met", None: "n/a"}[out.get("pause_target_met")]
        lines.append(f"snapshots taken by `vstor snapshot create {GROUP}` every {a.interval:g} s: "
                     f"{out['snapshots_taken']} ({out['snapshot_failures']} failed; daemon counted "
                     f"{out.get('daemon_snapshots_taken')}); CLI round trip median {ms(c['median_us'])} ms, "
                     f"max {ms(c['max_us'])} ms (control `vstor volume list`: median "
                     f"{ms(out.get('cli_control', {}).get('cli_round_trip', {}).get('median_us'))} ms)")
        lines.append(f"daemon snapshot_pause_us (DIR/stats.json, {p.get('count')} snapshots): p50 {ms(p.get('p50'))} "
                     f"ms, p99 {ms(p.get('p99'))} ms, max {ms(p.get('max'))} ms; target p99 < "
                     f"{PAUSE_TARGET_US / 1000:g} ms: {verdict}")
        for err in out.get("snapshot_errors", []):
            lines.append(f"snapshot failure: {err.splitlines()[-1] if err else '?'}")
    return "\n".join(lines)


# -- part 3 -------------------------------------------------------------------------------------
# The child that takes part 3's snapshots: it, not this process, holds the volume open, because a
# process holding a FUSE file cannot even fork (the child's close of it waits for the daemon) while
# the daemon is stalled. argv: image socket group first last seed volume-size.
BATCH_CHILD = r"""
import mmap, os, random, sys, time
from vstor.control.protocol import call
image, sock, group = sys.argv[1:4]
first, last, seed, size = map(int, sys.argv[4:8])
rng = random.Random(seed)
buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
fd = os.open(image, os.O_RDWR | os.O_DIRECT)
for k in range(first, last):
    for _ in range(16):  # 64 KiB, so that each snapshot's leaves differ from the previous one's
        buf[:] = rng.randbytes(4096)
        os.pwritev(fd, [buf], rng.randrange(size // 4096) * 4096)
    t0 = time.perf_counter()
    call(sock, "snapshot.create", timeout=86400, owner=group, name=f"s{k + 1:04d}")
    print(k + 1, time.perf_counter() - t0, flush=True)
os.close(fd)
"""


def take_snapshots(arr: Array, image: Path, first: int, last: int, seed: int, stall: float,
                   creates: list[float]) -> None:
    """Snapshots s{first+1}..s{last} over the control socket, each after 64 KiB of random 4 KiB
    O_DIRECT overwrites, by a child; appends each snapshot.create round trip (s) to creates.
    Raises Stalled when no snapshot completes for stall seconds."""
    if last <= first:
        return
    cmd = [sys.executable, "-c", BATCH_CHILD, str(image), arr.socket, GROUP, str(first), str(last), str(seed),
           str(1 * GIB)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    fd, pending, progress = proc.stdout.fileno(), b"", time.monotonic()
    try:
        while True:
            if select.select([fd], [], [], 0.5)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                creates += [float(line.split()[1]) for line in lines]
                progress = time.monotonic()
            elif time.monotonic() - progress > stall:
                raise Stalled(f"snapshot s{first + len(creates) + 1:04d} (or the 64 KiB written before it): no "
                              f"progress for {stall:.0f} s")
        try:
            proc.wait(stall)
        except subprocess.TimeoutExpired as exc:
            raise Stalled(f"closing {image}: no answer for {stall:.0f} s") from exc
        if proc.returncode != 0:
            raise BenchError(f"snapshot batch failed ({proc.returncode}): {proc.stderr.read().decode()[-500:]}")
    finally:
        finish(proc, grace=2)


def time_list(arr: Array, n: int, timeout: float, last: tuple[int, float] | None) -> dict[str, Any]:
    """Time `vstor snapshot list G --json`. The daemon computes the sizes under the store lock, so a
    listing that would take longer than timeout is skipped when the last one predicts it (quadratic
    growth), and one that times out is ended by killing and restarting the daemon."""
    if last and last[0] and n > last[0]:
        predicted = last[1] * (n / last[0]) ** 2
        if predicted > timeout:
            return {"status": "skipped", "predicted_s": round(predicted), "from": list(last)}
    cmd = [str(VSTOR), "snapshot", "list", GROUP, "--json", "--pool", str(arr.pool)]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        busy = busy_threads(daemon_stack(arr.pid))
        say(f"   snapshot list: no answer after {timeout:.0f} s; kill -9 and restart the daemon (it holds the lock)")
        return {"status": "timeout", "seconds": timeout, "busy": busy, "restart_s": round(arr.kill_and_restart(), 2)}
    secs = time.perf_counter() - t0
    if res.returncode != 0:
        raise BenchError(f"{shlex.join(cmd)} failed: {(res.stderr or res.stdout).strip()[-300:]}")
    return {"status": "ok", "seconds": round(secs, 3), "listed": len(json.loads(res.stdout)),
            "json_bytes": len(res.stdout)}


def part3(a: argparse.Namespace, arr: Array, image: Path, out: dict[str, Any]) -> None:
    rng = random.Random(7)
    out["snapshots"] = 0
    out["fill_s"] = round(fill(image, 1 * GIB, a.stall_timeout), 1)
    # Random writes fragment the chunks (and multiply the records reads look up), which alone slows
    # reads down: age the volume first, so that the 0-snapshot figures are not measured on a
    # pristine one while the later ones run after several random-write jobs.
    pre = out["precondition"] = fio_cpu(arr, image, "randwrite-precondition", "randwrite", 2 * a.io_runtime,
                                        a.stall_timeout)
    say(f"   filled the 1 GiB volume with 1 MiB writes in {out['fill_s']} s, then {2 * a.io_runtime} s of 4 KiB "
        f"random writes ({pre['ios']:,} writes) to age it")
    rows = out["rows"] = []
    last_list: tuple[int, float] | None = None
    for n in a.count_list:
        row: dict[str, Any] = {"snapshots": n}
        try:
            _part3_step(a, arr, image, rng, out, row, last_list)
        except Stalled as exc:
            err = stall_error(arr, exc)
            row["stalled"] = out["stalled"] = str(err)
            rows.append(row)
            say(f"   {n:>5} snapshots: STALLED: {err}")
            say("   stopping part 3 here (more snapshots only make it worse); kill -9 the daemon to free its clients")
            arr.kill()
            return
        rows.append(row)
        if row["list"]["status"] == "ok" and n:
            last_list = (n, row["list"]["seconds"])
        rd, wr = row["randread"], row["randwrite"]
        say(f"   {n:>5} snapshots ({row['created']} new in {row['batch_s']:.1f} s): randread {rd['iops']:,} IOPS "
            f"{rd['runs']} mean {rd['clat_mean_us']} us p99 {rd['p99_us']} us; randwrite {wr['iops']:,} IOPS "
            f"{wr['runs']}; list "
            f"{_list_cell(row['list'])} s; RSS {row['rss_kib'] / 1024:,.0f} MiB")


def _part3_step(a: argparse.Namespace, arr: Array, image: Path, rng: random.Random, out: dict[str, Any],
                row: dict[str, Any], last_list: tuple[int, float] | None) -> None:
    n = row["snapshots"]
    t0 = time.perf_counter()
    creates: list[float] = []
    try:
        take_snapshots(arr, image, out["snapshots"], n, rng.randrange(1 << 30), a.stall_timeout, creates)
    finally:
        out["snapshots"] += len(creates)
        row["created"] = len(creates)
        row["create"] = summary_us(creates)
    row["batch_s"] = round(time.perf_counter() - t0, 1)
    row["daemon_pause_us"] = pause_stats(arr.stats(a.stall_timeout))
    reads, writes = [], []
    for k in range(a.io_repeats):  # alternated, so drift of the machine hits both alike
        reads.append(fio_cpu(arr, image, f"randread-{n}-{k}", "randread", a.io_runtime, a.stall_timeout))
        writes.append(fio_cpu(arr, image, f"randwrite-{n}-{k}", "randwrite", a.io_runtime, a.stall_timeout))
    rd = row["randread"] = median_run(reads)
    wr = row["randwrite"] = median_run(writes)
    row["rss_kib"] = rss_kib(arr.daemon_pid())
    row["list"] = time_list(arr, n, a.list_timeout, last_list)
    base = out["rows"][0] if out["rows"] else row
    bread, bwrite = base["randread"], base["randwrite"]
    row["ratio"] = {"read_iops": round(rd["iops"] / bread["iops"], 3) if bread["iops"] else None,
                    "read_mean_lat": round(rd["clat_mean_us"] / bread["clat_mean_us"], 3)
                    if bread["clat_mean_us"] else None,
                    "write_iops": round(wr["iops"] / bwrite["iops"], 3) if bwrite["iops"] else None}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median IOPS, with every run's IOPS under "runs"."""
    ordered = sorted(runs, key=lambda r: r["iops"])
    return dict(ordered[len(ordered) // 2], runs=[r["iops"] for r in runs])


def _list_cell(lst: dict[str, Any]) -> str:
    if lst["status"] == "ok":
        return f"{lst['seconds']:,.2f}"
    if lst["status"] == "timeout":
        return f">{lst['seconds']:.0f}"
    return f"skip(~{lst['predicted_s']:,})"


def render3(out: dict[str, Any], a: argparse.Namespace) -> str:
    head = ["snapshots", "create med ms", "create max ms", "lock p99 ms", "read IOPS", "read mean us",
            "read p99 us", "write IOPS", "write p99 us", "write max us", "read x", "write x", "dCPU% r/w", "list s",
            "RSS MiB"]
    rows = []
    done = [r for r in out.get("rows", []) if "stalled" not in r]
    for r in done:
        c, p, rd, wr, ra = r["create"], r["daemon_pause_us"] or {}, r["randread"], r["randwrite"], r["ratio"]
        lock = ms(p.get("p99")) if p.get("count") else "-"
        rows.append([str(r["snapshots"]), ms(c["median_us"]), ms(c["max_us"]), lock, f"{rd['iops']:,}",
                     num(rd["clat_mean_us"], ",.1f"), num(rd["p99_us"]), f"{wr['iops']:,}", num(wr["p99_us"]),
                     num(wr["max_us"]), num(ra["read_iops"], ".2f"), num(ra["write_iops"], ".2f"),
                     f"{rd.get('daemon_cpu_pct', '-')}/{wr.get('daemon_cpu_pct', '-')}", _list_cell(r["list"]),
                     f"{r['rss_kib'] / 1024:,.0f}"])
    lines = [f"PART 3: 4 KiB random I/O (psync QD1 direct=1, {a.io_runtime} s per job) on a filled 1 GiB volume "
             f"(aged by {2 * a.io_runtime} s of random writes) with N snapshots of its group (64 KiB of random 4 KiB "
             "overwrites before each snapshot)",
             "create = snapshot.create over the control socket; lock p99 = daemon snapshot_pause_us (last 1000 "
             "snapshots); read x / write x = IOPS / IOPS with 0 snapshots; dCPU% = daemon CPU during the read/write "
             "job (% of one core); list = `vstor snapshot list G --json` (s, includes CLI start-up)",
             table(head, rows)]
    for r in out.get("rows", []):
        if "stalled" in r:
            lines.append(f"{r['snapshots']} snapshots: STALLED ({r.get('created', 0)} of the new snapshots taken): "
                         f"{r['stalled']}")
    if len(done) > 1:
        top = done[-1]
        ok = all(x is not None and x >= 1 - RATIO_TARGET for x in (top["ratio"]["read_iops"],
                                                                   top["ratio"]["write_iops"]))
        lines.append(f"target: IOPS with {top['snapshots']} snapshots within {RATIO_TARGET:.0%} of 0 snapshots: "
                     f"{'met' if ok else 'NOT met'}")
        lst = top["list"]
        met = "met" if lst["status"] == "ok" and lst["seconds"] < LIST_TARGET_S else "NOT met"
        lines.append(f"target: snapshot list with {top['snapshots']} snapshots < {LIST_TARGET_S:g} s: {met}")
    for r in done:
        lst = r["list"]
        if lst["status"] == "timeout":
            lines.append(f"list at {r['snapshots']}: no answer after {lst['seconds']:.0f} s (--list-timeout); the "
                         f"daemon was killed and restarted ({lst['restart_s']} s) to release the store lock"
                         + (f"; busy: {' | '.join(lst['busy'])}" if lst.get("busy") else ""))
        elif lst["status"] == "skipped":
            lines.append(f"list at {r['snapshots']}: skipped, ~{lst['predicted_s']:,} s predicted (quadratic from "
                         f"{lst['from'][1]:.2f} s at {lst['from'][0]}), over --list-timeout {a.list_timeout:.0f} s")
    return "\n".join(lines)


# -- part 4 -------------------------------------------------------------------------------------
def part4(a: argparse.Namespace, arr: Array, out: dict[str, Any], snaps: int) -> None:
    say(f"\n== part 4: stop, pool check and start with {snaps} snapshots")
    out["snapshots"] = snaps
    if not arr.running:
        out["stop_error"] = "not measured: the daemon was killed after part 3 stalled (the start replays the journal)"
        say(f"   vstor array stop: {out['stop_error']}")
    else:
        out["rss_before_stop_kib"] = rss_kib(arr.daemon_pid())
        try:
            out["stop_s"] = round(arr.stop_timed(a.stop_timeout), 2)
            say(f"   vstor array stop: {out['stop_s']} s")
        except BenchError as exc:
            busy = busy_threads(daemon_stack(arr.pid))
            out["stop_error"] = str(exc) + (f"; busy threads: {' | '.join(busy)}" if busy else "")
            say(f"   vstor array stop failed: {out['stop_error']}; kill -9 instead (the start replays the journal)")
            arr.kill()
    cmd = [str(VSTOR), "pool", "check", str(arr.pool), "--json"]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=a.check_timeout)
        secs = time.perf_counter() - t0
        try:
            rep = json.loads(res.stdout)
        except ValueError:
            raise BenchError(f"{shlex.join(cmd)} failed ({res.returncode}): {res.stderr.strip()[-300:]}") from None
        out["check"] = {"status": "ok", "seconds": round(secs, 2), "clean": rep["clean"], "records": rep["records"],
                        "extents": rep["extents"], "bytes_verified": rep["bytes_verified"],
                        "problems": rep["problems"][:5], "notes": rep["notes"][:5]}
    except subprocess.TimeoutExpired:  # run() killed it; its pool lock died with it
        out["check"] = {"status": "timeout", "seconds": a.check_timeout}
    say(f"   vstor pool check: {out['check']['seconds']} s ({out['check']['status']})")
    out["start_s"] = round(arr.start_timed(), 2)
    out["rss_after_start_kib"] = rss_kib(arr.daemon_pid())
    say(f"   vstor array start: {out['start_s']} s; daemon RSS {out['rss_after_start_kib'] / 1024:,.0f} MiB")
    try:
        out["recovery"] = json.loads(arr.cli("array", "status", "--json", timeout=a.stall_timeout).stdout)["recovery"]
    except BenchError as exc:
        out["recovery"] = f"no status: {exc}"


def render4(out: dict[str, Any], rss0_kib: int | None) -> str:
    chk = out.get("check", {})
    if chk.get("status") == "ok":
        check = (f"{chk['seconds']:,.2f} s ({'clean' if chk['clean'] else 'PROBLEMS'}: {chk['records']:,} records, "
                 f"{chk['extents']:,} extents, {format_size(chk['bytes_verified'])} verified)")
    else:
        check = f"no result after {chk.get('seconds')} s (--check-timeout)" if chk else "-"
    stop = f"{out['stop_s']:,.2f} s" if "stop_s" in out else out.get("stop_error", "-")
    if "stop_s" not in out and not stop.startswith("not measured"):
        stop = f"FAILED: {stop}"
    rows = [["vstor array stop (final checkpoint)", stop],
            ["vstor pool check", check],
            ["vstor array start (until READY)", f"{out['start_s']:,.2f} s" if "start_s" in out else "-"],
            ["daemon VmRSS before the stop", f"{out['rss_before_stop_kib'] / 1024:,.0f} MiB"
             if "rss_before_stop_kib" in out else "-"],
            ["daemon VmRSS after the start", f"{out['rss_after_start_kib'] / 1024:,.0f} MiB"
             if "rss_after_start_kib" in out else "-"]]
    if rss0_kib:
        rows.append(["daemon VmRSS with 0 snapshots (part 3)", f"{rss0_kib / 1024:,.0f} MiB"])
    rec = out.get("recovery")
    if isinstance(rec, dict):
        rows.append(["journal replayed at start", f"{rec.get('records')} records in {rec.get('seconds')} s"])
    for note in chk.get("notes", []) + chk.get("problems", []):
        rows.append(["pool check says", note])
    return (f"PART 4: pool check and daemon start-up with {out.get('snapshots')} snapshots (the pool of part 3)\n"
            + "\n".join(f"{k:<42} {v}" for k, v in rows))


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


# -- main ---------------------------------------------------------------------------------------
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


if __name__ == "__main__":
    sys.exit(main())
