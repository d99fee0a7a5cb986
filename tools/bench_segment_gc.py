"""GC space and write amplification against the journal segment size, in process.

    .venv/bin/python -m tools.bench_segment_gc [--segment-sizes 64M,256M] [--gib 4] [--passes 2] [--write-kib 64]
                                               [--tick-mib 64] [--seed 1] [--workdir /var/tmp] [--json-out FILE]

For each segment size, in its own process (so each starts fresh), on a plain pool (no
compression, no encryption) in a temporary directory under --workdir: one volume of --gib GiB
is filled with 1 MiB sequential writes of random data and synced; then --passes x its size is
written as random --write-kib overwrites aligned to their size. A maintenance tick
(``Reclaimer.run_tick`` with the daemon's settings, a manual clock advanced 1 s per tick) runs
after every --tick-mib MiB of host writes, as the daemon's loop runs once a second; then, after a
sync, idle ticks run until one moves nothing and the last checkpoint covers the whole journal
(segments emptied by GC are deleted at checkpoints), at most IDLE_CAP ticks.

Per segment size: the host bytes written after the fill; the bytes GC moved (the store's
``relocated_bytes`` counter: GC moves plus chunk compactions, which this workload of aligned
writes rarely needs), during the writes and in the idle ticks; write amplification
(host + moved) / host; the journal's bytes on disk (st_blocks of the segment files), at its peak
(sampled after every tick) and at the end; the volume's live (mapped) bytes; space amplification
(disk / live) peak and final; the segment files at the end; the host write rate over the
overwrite phase (wall time including the ticks); the time spent inside ticks; and how many ticks
of the overwrite phase left GC work for the next ("cut/ticks"): GC moves at most ``bytes_per_tick``
(32 MiB) per tick, in at most ``moves_per_tick`` records and ``seconds_per_tick`` of wall time,
so it can lag behind the writes and catch up in the idle ticks ("(idle)": bytes moved then).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tools.benchlib.procs import install_signal_handlers, run, signals_deferred, stop_process
from tools.benchlib.report import table
from vstor.clock import ManualClock
from vstor.errors import UsageError
from vstor.store.maintenance.reclaim import Reclaimer
from vstor.store.store import Store
from vstor.store.superblock import init_pool
from vstor.units import format_size, parse_size

MIB, GIB = 1 << 20, 1 << 30
IDLE_CAP = 20_000  # idle ticks at most after the writes


def journal_on_disk(jdir: str) -> tuple[int, int]:
    """(bytes the segment files take on disk, number of segment files)."""
    used = files = 0
    with os.scandir(jdir) as it:
        for e in it:
            if e.name.endswith(".seg"):
                try:
                    used += e.stat().st_blocks * 512
                    files += 1
                except FileNotFoundError:  # deleted meanwhile
                    pass
    return used, files


class Ticker:
    """Maintenance ticks on a manual clock, timed, with the journal's peak size sampled after each."""

    def __init__(self, store: Store, clock: ManualClock) -> None:
        self.store, self.clock = store, clock
        self.rec = Reclaimer(store, clock=clock)  # the daemon's settings
        self.seconds = 0.0
        self.ticks = self.failed = 0
        self.cut = 0  # ticks whose GC stopped at its per-tick limit with work left for the next
        self.peak = journal_on_disk(store.paths["journal"])[0]

    def tick(self) -> int:
        """One tick; returns the bytes it moved."""
        before = self.store.stats.relocated_bytes
        self.clock.advance(1.0)
        t0 = time.perf_counter()
        self.failed += not self.rec.run_tick()
        self.seconds += time.perf_counter() - t0
        self.ticks += 1
        self.cut += bool(self.rec._pending)
        self.peak = max(self.peak, journal_on_disk(self.store.paths["journal"])[0])
        return self.store.stats.relocated_bytes - before


def one_run(a: argparse.Namespace, seg: int, base: str) -> dict[str, Any]:
    pool = f"{base}/pool"
    init_pool(pool, compress="none", segment_size=seg)
    clock = ManualClock()
    s = Store.open(pool, clock=clock)
    try:
        size, w = a.gib * GIB, a.write_kib << 10
        v = s.create_volume("v", size).id
        buf = bytearray(os.urandom(MIB))
        view = memoryview(buf)
        t0 = time.perf_counter()
        for i in range(size // MIB):
            buf[:8] = i.to_bytes(8, "little")  # no two writes alike
            s.write(v, i * MIB, view)
        s.sync()
        print(f"  fill: {size / (time.perf_counter() - t0) / 1e6:.0f} MB/s", flush=True)
        t = Ticker(s, clock)
        r = t.rec
        print(f"  GC per tick at most {r.bytes_per_tick >> 20} MiB, {r.moves_per_tick} moves, {r.seconds_per_tick} s; "
              f"min_dead {r.min_dead}; checkpoint after {r.checkpoint_bytes >> 20} MiB or "
              f"{r.checkpoint_interval:.0f} s", flush=True)
        host0, moved0 = s.stats.write_bytes, s.stats.relocated_bytes
        rng, blocks, per_tick = random.Random(a.seed), size // w, max(1, (a.tick_mib * MIB) // w)
        t0 = time.perf_counter()
        for n in range(1, a.passes * size // w + 1):
            buf[:8] = n.to_bytes(8, "little")
            s.write(v, rng.randrange(blocks) * w, view[:w])
            if n % per_tick == 0:
                t.tick()
        s.sync()
        write_s = time.perf_counter() - t0
        host, moved_writes, write_ticks = s.stats.write_bytes - host0, s.stats.relocated_bytes - moved0, t.ticks
        cut_writes = t.cut
        print(f"  overwrite: {host / write_s / 1e6:.0f} MB/s; {write_ticks} ticks moved {moved_writes / GIB:.2f} GiB, "
              f"{cut_writes} of them stopped at the per-tick limit with GC work left", flush=True)
        capped = True
        for _ in range(IDLE_CAP):
            if not t.tick() and s.journal.appended_bytes == s.ckpt_appended:
                capped = False
                break
        idle, moved = t.ticks - write_ticks, s.stats.relocated_bytes - moved0
        disk, files = journal_on_disk(s.paths["journal"])
        live = s.volume_usage(v)
        return {"segment_size": seg, "host_bytes": host, "moved_bytes": moved, "moved_in_writes": moved_writes,
                "moved_idle": moved - moved_writes, "write_amp": (host + moved) / host, "disk_peak": t.peak,
                "disk_final": disk, "live_bytes": live, "space_amp_peak": t.peak / live,
                "space_amp_final": disk / live, "segments_final": files, "write_MBps": host / write_s / 1e6,
                "write_seconds": write_s, "tick_seconds": t.seconds, "write_ticks": write_ticks,
                "idle_ticks": idle, "idle_cap_hit": capped,
                "cut_ticks_writes": cut_writes, "cut_ticks_idle": t.cut - cut_writes, "failed_ticks": t.failed,
                "checkpoints": s.stats.checkpoints, "segments_deleted": s.stats.segments_deleted}
    finally:
        s.close(checkpoint=False)  # the directory goes right after


def machine(workdir: str) -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    try:
        fs = run(["findmnt", "-n", "-o", "FSTYPE", "--target", workdir], check=False).stdout.strip()
    except OSError:
        fs = "?"
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "kernel": platform.release(),
            "cpus": os.cpu_count(), "cpu": cpu, "mem_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "python": platform.python_version(), "workdir": workdir, "workdir_fs": fs or "?",
            "workdir_free": shutil.disk_usage(workdir).free}


def render(rows: list[dict[str, Any]]) -> str:
    head = ["segment", "host GiB", "moved GiB", "(idle)", "WA", "disk peak", "disk end", "live GiB",
            "SA peak", "SA end", "segs", "MB/s", "tick s", "cut/ticks", "idle ticks"]
    out = [[format_size(r["segment_size"]), f"{r['host_bytes'] / GIB:.2f}", f"{r['moved_bytes'] / GIB:.2f}",
            f"{r['moved_idle'] / GIB:.2f}", f"{r['write_amp']:.2f}", f"{r['disk_peak'] / GIB:.2f}",
            f"{r['disk_final'] / GIB:.2f}", f"{r['live_bytes'] / GIB:.2f}", f"{r['space_amp_peak']:.2f}",
            f"{r['space_amp_final']:.2f}", str(r["segments_final"]), f"{r['write_MBps']:.0f}",
            f"{r['tick_seconds']:.1f}", f"{r['cut_ticks_writes']}/{r['write_ticks']}",
            f"{r['idle_ticks']}{' (cap)' if r['idle_cap_hit'] else ''}"] for r in rows]
    return table(head, out, first_left=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--segment-sizes", default="64M,256M")
    p.add_argument("--gib", type=int, default=4, help="volume size")
    p.add_argument("--passes", type=int, default=2, help="times the volume's size is overwritten")
    p.add_argument("--write-kib", type=int, default=64, help="size (and alignment) of each random overwrite")
    p.add_argument("--tick-mib", type=int, default=64, help="host MiB written between two maintenance ticks")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", default="/var/tmp")
    p.add_argument("--json-out")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child: this segment size, ...
    p.add_argument("--base", help=argparse.SUPPRESS)  # ... a pool under this directory, ...
    p.add_argument("--result", help=argparse.SUPPRESS)  # ... results as JSON to this file
    a = p.parse_args()
    install_signal_handlers()
    if a.one is not None:
        try:
            Path(a.result).write_text(json.dumps(one_run(a, a.one, a.base)))
        except KeyboardInterrupt:  # passed on by the parent, which reports it
            return 130
        return 0
    try:
        sizes = [parse_size(x, "segment size") for x in a.segment_sizes.split(",")]
    except UsageError as e:
        p.error(str(e))
    print(f"$ {shlex.join(sys.orig_argv)}")
    h = machine(a.workdir)
    print(f"{h['date']}  kernel {h['kernel']}, {h['cpus']} CPUs ({h['cpu']}), {format_size(h['mem_bytes'])} RAM, "
          f"Python {h['python']}; workdir {a.workdir} ({h['workdir_fs']}, {format_size(h['workdir_free'])} free)")
    print(f"{a.gib} GiB volume, {a.passes} passes of {a.write_kib} KiB random overwrites, a maintenance tick "
          f"(1 s of the manual clock) every {a.tick_mib} MiB of host writes", flush=True)
    rows: list[dict[str, Any]] = []
    interrupted = False
    try:
        for seg in sizes:
            print(f"segment size {format_size(seg)}:", flush=True)
            base = tempfile.mkdtemp(prefix="vstor-seggc-", dir=a.workdir)
            try:
                cmd = [sys.executable, "-m", "tools.bench_segment_gc", "--gib", str(a.gib), "--passes", str(a.passes),
                       "--write-kib", str(a.write_kib), "--tick-mib", str(a.tick_mib), "--seed", str(a.seed),
                       "--one", str(seg), "--base", base, "--result", f"{base}/result.json"]
                proc = subprocess.Popen(cmd, start_new_session=True)  # a terminal Ctrl-C reaches us; we pass it on
                try:
                    rc = proc.wait()
                except KeyboardInterrupt:
                    stop_process(proc, grace=60, sig=signal.SIGINT)  # the child closes its store
                    raise
                if rc:
                    raise SystemExit(f"bench_segment_gc: the run for {format_size(seg)} failed ({rc})")
                rows.append(json.loads(Path(f"{base}/result.json").read_text()))
            finally:
                with signals_deferred():
                    shutil.rmtree(base, ignore_errors=True)
    except KeyboardInterrupt as e:
        interrupted = True
        print(f"\ninterrupted ({str(e) or 'Ctrl-C'}); temporary directories removed", file=sys.stderr, flush=True)
    if rows:
        print(render(rows))
        for r in rows:
            if r["idle_cap_hit"] or r["failed_ticks"]:
                print(f"  {format_size(r['segment_size'])}: idle cap hit {r['idle_cap_hit']}, "
                      f"{r['failed_ticks']} failed ticks", flush=True)
    if a.json_out:
        doc = {"command": shlex.join(sys.orig_argv), **h, "settings": {k: v for k, v in vars(a).items()
               if k not in ("one", "base", "result", "json_out")}, "interrupted": interrupted, "results": rows}
        Path(a.json_out).write_text(json.dumps(doc, indent=2) + "\n")
    return 130 if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
