"""Part 2: the write pause fio sees while `vstor snapshot create G` runs every 0.5 s, against no
snapshots and a CLI control loop."""

from __future__ import annotations

import argparse
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tools.benchlib.report import table
from tools.benchlib.targets import VSTOR

from .array import Array, fill, fio_cpu, pause_stats, stall_error
from .common import GIB, GROUP, PAUSE_TARGET_US, Stalled, ms, num, say, summary_us


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
        f"p99 {ms(pause['p99'] if pause else None)} ms, max {ms(pause['max'] if pause else None)} ms")


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
