"""Daemon memory under random small writes, with and without the fragment budget.

    .venv/bin/python -m tools.bench_fragments [--gib 4] [--writes 300000] [--storms 3] [--budget-mib 32]

In-process (Store API, no FUSE), on a plain pool in a temporary directory under /var/tmp: a
volume of --gib GiB is filled with 1 MiB writes, then takes --storms bursts of --writes
random 4 KiB writes. During a burst the fragment budget's step of the maintenance tick
(``Reclaimer.keep_fragment_budget``, manual clock) runs after every 10,000 writes, as the
daemon's loop runs it once a second at 10,000 writes a second; after a burst, idle ticks run
until it has nothing left to do. Two runs, each in its own process so that RSS starts from
the same point: "off" (a budget no count reaches) and "on" (--budget-mib). Per burst: write
rate, the extents the maps hold after the burst and after the idle ticks, bytes compacted,
and RSS growth since the fill.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

from vstor.clock import ManualClock
from vstor.store.maintenance.reclaim import Reclaimer
from vstor.store.maps import fragments
from vstor.store.store import Store
from vstor.store.superblock import init_pool

MIB = 1 << 20


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def one_run(gib: int, writes: int, storms: int, budget_extents: int) -> None:
    base = tempfile.mkdtemp(prefix="vstor-fragbench-", dir="/var/tmp")
    try:
        init_pool(f"{base}/pool")
        s = Store.open(f"{base}/pool")
        try:
            size = gib << 30
            v = s.create_volume("v", size).id
            buf = os.urandom(MIB)
            for i in range(size // MIB):
                s.write(v, i * MIB, buf)
            clock = ManualClock()
            rec = Reclaimer(s, clock=clock, fragment_budget=budget_extents, seconds_per_tick=None)
            rss0, rng = rss_mib(), random.Random(1)
            for storm in range(1, storms + 1):
                compacted = 0
                t0 = time.perf_counter()
                for n in range(1, writes + 1):
                    s.write(v, rng.randrange(size // 4096) * 4096, buf[:4096])
                    if n % 10_000 == 0:  # one tick a second at 10,000 writes a second
                        clock.advance(1.0)
                        compacted += rec.keep_fragment_budget()
                dt = time.perf_counter() - t0
                during = rec.count_fragments().extents
                quiet = 0
                while True:  # then idle ticks until the budget is kept
                    clock.advance(1.0)
                    done = rec.keep_fragment_budget()
                    compacted += done
                    quiet += 1
                    if not done and not rec._fragment_work and quiet > rec.fragment_interval:
                        break
                print(f"  storm {storm}: {writes / dt:,.0f} writes/s; extents after it {during:,}, after "
                      f"{quiet} idle ticks {rec.count_fragments().extents:,}; compacted {compacted / MIB:,.0f} MiB; "
                      f"RSS +{rss_mib() - rss0:.1f} MiB", flush=True)
        finally:
            s.close(checkpoint=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=int, default=4)
    p.add_argument("--writes", type=int, default=300_000)
    p.add_argument("--storms", type=int, default=3, help="bursts of --writes, each followed by idle ticks")
    p.add_argument("--budget-mib", type=int, default=fragments.BUDGET_BYTES >> 20)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child run with this budget in extents
    a = p.parse_args()
    if a.one is not None:
        one_run(a.gib, a.writes, a.storms, a.one)
        return 0
    print("$ " + " ".join([sys.executable, *sys.orig_argv[1:]]), flush=True)
    budget = (a.budget_mib << 20) // fragments.EXTENT_BYTES
    for label, extents in (("off", 1 << 62), (f"on ({a.budget_mib} MiB = {budget:,} extents)", budget)):
        print(f"budget {label}:", flush=True)
        subprocess.run([sys.executable, "-m", "tools.bench_fragments", "--gib", str(a.gib), "--writes", str(a.writes),
                        "--storms", str(a.storms), "--one", str(extents)], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
