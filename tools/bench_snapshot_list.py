"""Time of `snapshot list` (sizes included) with 0, 100 and 1,000 snapshots, in process.

    .venv/bin/python -m tools.bench_snapshot_list [--age-writes 300000] [--counts 0,100,1000] [--repeats 3]

In-process (Store API, no FUSE, no daemon, no CLI start-up), on a pool in a temporary
directory under /var/tmp: a 1 GiB volume is filled with 1 MiB writes and aged by random
4 KiB writes; before each snapshot 16 random 4 KiB writes land, so every snapshot holds new
leaf versions, as in part 3 of tools/bench_snapshots. At each count it prints the median
and the slowest of ``--repeats`` listings (``snapshots.listing``: the exclusive and shared
bytes of every snapshot), the number of leaf versions, and the result's total exclusive bytes,
so that runs of two versions of the code can be checked to agree.

After the last count the pool is closed with a checkpoint and opened again, as a daemon
restart does, and the first listings after the restart are timed the same way: they rely on
the leaf origins (vstor/store/maps/lineage.py) that the checkpoint carries since version 4.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

from tools.aged_volume import aged_volume, snapshot_up_to
from tools.benchlib.timing import Timer
from vstor.store.catalog import snapshots
from vstor.store.store import Store


def timed_listings(s: Store, repeats: int) -> tuple[list[float], list[dict]]:
    times, out = [], []
    for _ in range(repeats):
        gc.collect()  # not timed: the daemon's collector stays frozen (vstor/control/host/pygc.py)
        with Timer() as t:
            out = snapshots.listing(s, "v")
        times.append(t.seconds)
    return times, out


def report(label: str, count: int, s: Store, times: list[float], out: list[dict]) -> None:
    with s._lock:
        versions = len({id(leaf) for vm in s.state.all_maps() for leaf in vm.leaves.values()})
    excl = sum(d["exclusive"] for d in out)
    print(f"{label:<9} {count:>9} {len(out):>6} {versions:>8,} {statistics.median(times):>8.3f} "
          f"{max(times):>8.3f} {'/'.join(f'{t:.3f}' for t in times):>24} {excl:>14,}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--age-writes", type=int, default=300_000)
    p.add_argument("--counts", default="0,100,1000")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    counts = [int(c) for c in a.counts.split(",")]
    print("$ " + " ".join([sys.executable, *sys.orig_argv[1:]]), flush=True)
    with aged_volume("vstor-listbench-", a.age_writes) as (s, v, rng, buf):
        print(f"1 GiB volume filled and aged by {a.age_writes} random 4 KiB writes", flush=True)
        print(f"{'when':<9} {'snapshots':>9} {'listed':>6} {'versions':>8} {'median s':>8} {'max s':>8} "
              f"{'each s':>24} {'exclusive B':>14}")
        taken = 0
        for count in counts:
            taken = snapshot_up_to(s, v, rng, buf, taken, count)
            report("running", count, s, *timed_listings(s, a.repeats))
        pool = s.pool
        s.close()
        t0 = time.perf_counter()
        s2 = Store.open(pool)
        opened = time.perf_counter() - t0
        try:
            report("reopened", taken, s2, *timed_listings(s2, a.repeats))
            print(f"(open after the checkpoint: {opened:.1f} s)", flush=True)
        finally:
            s2.close(checkpoint=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
