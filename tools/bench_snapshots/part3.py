"""Part 3: 4 KiB random I/O and `snapshot list` with 0, 100 and 1000 snapshots of an aged volume."""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tools.benchlib.procs import BenchError, rss_kib
from tools.benchlib.report import table
from tools.benchlib.targets import VSTOR

from .array import Array, fill, fio_cpu, pause_stats, stall_error
from .common import (
    GIB,
    GROUP,
    LIST_TARGET_S,
    RATIO_TARGET,
    Stalled,
    busy_threads,
    daemon_stack,
    finish,
    ms,
    num,
    say,
    summary_us,
)

CONTROL = "control"  # the volume in no group that part 3's jobs alternate with

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
    control = _control_volume(arr)
    out["fill_s"] = round(fill(image, 1 * GIB, a.stall_timeout), 1)
    fill(control, 1 * GIB, a.stall_timeout)
    # Random writes fragment the chunks (and multiply the records reads look up), which alone slows
    # reads down: age the volume first, so that the 0-snapshot figures are not measured on a
    # pristine one while the later ones run after several random-write jobs.
    pre = out["precondition"] = fio_cpu(arr, image, "randwrite-precondition", "randwrite", 2 * a.io_runtime,
                                        a.stall_timeout)
    fio_cpu(arr, control, "randwrite-precondition-control", "randwrite", 2 * a.io_runtime, a.stall_timeout)
    say(f"   filled the 1 GiB volume and the control volume with 1 MiB writes ({out['fill_s']} s the first), then "
        f"{2 * a.io_runtime} s of 4 KiB random writes each ({pre['ios']:,} writes the first) to age them")
    rows = out["rows"] = []
    last_list: tuple[int, float] | None = None
    for n in a.count_list:
        row: dict[str, Any] = {"snapshots": n}
        try:
            _part3_step(a, arr, (image, control), rng, out, row, last_list)
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
        rd, wr, ctl = row["randread"], row["randwrite"], row["control"]
        say(f"   {n:>5} snapshots ({row['created']} new in {row['batch_s']:.1f} s): randread {rd['iops']:,} IOPS "
            f"{rd['runs']} mean {rd['clat_mean_us']} us p99 {rd['p99_us']} us; randwrite {wr['iops']:,} IOPS "
            f"{wr['runs']}; control volume: randread {ctl['randread']['runs']}, randwrite "
            f"{ctl['randwrite']['runs']}; list {_list_cell(row['list'])} s; RSS {row['rss_kib'] / 1024:,.0f} MiB")


def _control_volume(arr: Array) -> Path:
    """A second 1 GiB volume of the pool, in no group: no snapshot ever holds it. Its jobs
    alternate with the snapshotted volume's at every count, so the two are compared at the
    same moment of the pool's and the machine's life (consecutive 10 s jobs on one volume,
    no snapshots, varied from 8.4k to 14.6k write IOPS: docs/benchmarks.md section 5)."""
    arr.cli("volume", "create", CONTROL, "--size", str(GIB))
    path = arr.mnt / "volumes" / CONTROL
    deadline = time.monotonic() + 10
    while not path.exists():
        if time.monotonic() > deadline:
            raise BenchError(f"{path} did not appear")
        time.sleep(0.05)
    return path


def _part3_step(a: argparse.Namespace, arr: Array, images: tuple[Path, Path], rng: random.Random,
                out: dict[str, Any], row: dict[str, Any], last_list: tuple[int, float] | None) -> None:
    n = row["snapshots"]
    image, control = images
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
    reads, writes, creads, cwrites = [], [], [], []
    for k in range(a.io_repeats):  # alternated, so drift of the machine hits all alike
        reads.append(fio_cpu(arr, image, f"randread-{n}-{k}", "randread", a.io_runtime, a.stall_timeout))
        creads.append(fio_cpu(arr, control, f"randread-{n}-{k}-control", "randread", a.io_runtime, a.stall_timeout))
        writes.append(fio_cpu(arr, image, f"randwrite-{n}-{k}", "randwrite", a.io_runtime, a.stall_timeout))
        cwrites.append(fio_cpu(arr, control, f"randwrite-{n}-{k}-control", "randwrite", a.io_runtime,
                               a.stall_timeout))
    rd = row["randread"] = median_run(reads)
    wr = row["randwrite"] = median_run(writes)
    crd, cwr = median_run(creads), median_run(cwrites)
    row["control"] = {"randread": crd, "randwrite": cwr}
    row["rss_kib"] = rss_kib(arr.daemon_pid())
    row["list"] = time_list(arr, n, a.list_timeout, last_list)
    base = out["rows"][0] if out["rows"] else row
    bread, bwrite = base["randread"], base["randwrite"]
    row["ratio"] = {"read_iops": round(rd["iops"] / bread["iops"], 3) if bread["iops"] else None,
                    "read_mean_lat": round(rd["clat_mean_us"] / bread["clat_mean_us"], 3)
                    if bread["clat_mean_us"] else None,
                    "write_iops": round(wr["iops"] / bwrite["iops"], 3) if bwrite["iops"] else None,
                    "read_iops_control": round(rd["iops"] / crd["iops"], 3) if crd["iops"] else None,
                    "write_iops_control": round(wr["iops"] / cwr["iops"], 3) if cwr["iops"] else None}


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
            "read p99 us", "write IOPS", "write p99 us", "write max us", "read x", "write x", "read x ctl",
            "write x ctl", "dCPU% r/w", "list s", "RSS MiB"]
    rows = []
    done = [r for r in out.get("rows", []) if "stalled" not in r]
    for r in done:
        c, p, rd, wr, ra = r["create"], r["daemon_pause_us"] or {}, r["randread"], r["randwrite"], r["ratio"]
        lock = ms(p.get("p99")) if p.get("count") else "-"
        rows.append([str(r["snapshots"]), ms(c["median_us"]), ms(c["max_us"]), lock, f"{rd['iops']:,}",
                     num(rd["clat_mean_us"], ",.1f"), num(rd["p99_us"]), f"{wr['iops']:,}", num(wr["p99_us"]),
                     num(wr["max_us"]), num(ra["read_iops"], ".2f"), num(ra["write_iops"], ".2f"),
                     num(ra.get("read_iops_control"), ".2f"), num(ra.get("write_iops_control"), ".2f"),
                     f"{rd.get('daemon_cpu_pct', '-')}/{wr.get('daemon_cpu_pct', '-')}", _list_cell(r["list"]),
                     f"{r['rss_kib'] / 1024:,.0f}"])
    lines = [f"PART 3: 4 KiB random I/O (psync QD1 direct=1, {a.io_runtime} s per job) on a filled 1 GiB volume "
             f"(aged by {2 * a.io_runtime} s of random writes) with N snapshots of its group (64 KiB of random 4 KiB "
             "overwrites before each snapshot)",
             "create = snapshot.create over the control socket; lock p99 = daemon snapshot_pause_us (last 1000 "
             "snapshots); read x / write x = IOPS / IOPS with 0 snapshots; x ctl = IOPS / the control volume's "
             "IOPS in jobs alternated with these (a volume of the same pool in no group, filled and aged alike); "
             "dCPU% = daemon CPU during the read/write job (% of one core); list = `vstor snapshot list G --json` (s, "
             "includes CLI start-up)",
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
        ok = all(x is not None and x >= 1 - RATIO_TARGET for x in (top["ratio"].get("read_iops_control"),
                                                                   top["ratio"].get("write_iops_control")))
        lines.append(f"target: IOPS with {top['snapshots']} snapshots within {RATIO_TARGET:.0%} of the control volume "
                     f"at the same time: {'met' if ok else 'NOT met'}")
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
