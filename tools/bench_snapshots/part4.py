"""Part 4: `array stop`, `pool check` and `array start` timed with part 3's snapshots, and the daemon's RSS."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import time
from typing import Any

from tools.benchlib.procs import BenchError, rss_kib
from tools.benchlib.targets import VSTOR
from vstor.units import format_size

from .array import Array
from .common import busy_threads, daemon_stack, say


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
