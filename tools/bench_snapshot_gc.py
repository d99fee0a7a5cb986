"""Request cost with 0, 100 and 1,000 snapshots, with Python's collector as is and frozen.

    .venv/bin/python -m tools.bench_snapshot_gc [--age-writes 300000] [--ops 200000] [--counts 0,100,1000]

In-process (Store API, no FUSE, no maintenance thread), on a pool in a temporary directory
under /var/tmp: a 1 GiB volume is filled with 1 MiB writes and aged by random 4 KiB writes;
before each snapshot 16 random 4 KiB writes land, so every snapshot holds new leaf versions,
as in part 3 of tools/bench_snapshots. At each snapshot count, ``--ops`` random 4 KiB
writes and then as many reads are timed twice: once with the collector as Python leaves it
("gc as is") and once under the daemon's GcPolicy ("policy", vstor/control/host/pygc.py), which
calls ``gc.freeze()`` at once and then every 10 s from its thread. For each run: mean µs per
request, the collector's share of it (timed by a gc.callbacks hook), its longest pause and
the number of full (generation 2) passes; ratios are against the same mode at 0 snapshots. One process, one run: the two
modes see the same maps.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from collections.abc import Callable

from tools.aged_volume import BLOCKS, aged_volume, snapshot_up_to
from tools.benchlib.timing import Timer
from vstor.control.host.pygc import GcPolicy
from vstor.store.store import Store


class GcTimer:
    """Times the collector's passes while installed."""

    def __init__(self) -> None:
        self.total = self.longest = 0.0
        self.full = 0
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        dt = time.perf_counter() - self._t0
        self.total += dt
        self.longest = max(self.longest, dt)
        self.full += info.get("generation") == 2


def timed(fn: Callable[[int], object], ops: int, rng: random.Random) -> dict:
    timer = GcTimer()
    gc.callbacks.append(timer)
    try:
        with Timer() as t:
            for _ in range(ops):
                fn(rng.randrange(BLOCKS) * 4096)
        wall = t.seconds
    finally:
        gc.callbacks.remove(timer)
    return {"us": wall / ops * 1e6, "gc_us": timer.total / ops * 1e6,
            "gc_max_ms": timer.longest * 1e3, "full": timer.full}


def measure(s: Store, v: int, ops: int, with_policy: bool, seed: int) -> dict:
    policy = GcPolicy() if with_policy else None
    if policy is not None:
        policy.start()
    data = os.urandom(4096)
    rng = random.Random(seed)
    try:
        return {"write": timed(lambda off: s.write(v, off, data), ops, rng),
                "read": timed(lambda off: s.read(v, off, 4096), ops, rng)}
    finally:
        if policy is not None:
            policy.stop()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--age-writes", type=int, default=300_000)
    p.add_argument("--ops", type=int, default=100_000, help="timed writes, and reads, per mode and count")
    p.add_argument("--counts", default="0,100,1000")
    a = p.parse_args()
    counts = [int(c) for c in a.counts.split(",")]
    print("$ " + " ".join([sys.executable, *sys.orig_argv[1:]]), flush=True)
    with aged_volume("vstor-gcbench-", a.age_writes) as (s, v, rng, buf):
        print(f"1 GiB volume filled and aged by {a.age_writes} random 4 KiB writes", flush=True)
        base_us: dict[tuple[str, str], float] = {}
        taken = 0
        print(f"{'snapshots':>9} {'mode':<10} {'op':<5} {'us/op':>7} {'x':>5} {'gc us/op':>8} "
              f"{'gc max ms':>9} {'gen2':>4} {'objects':>9}")
        for count in counts:
            taken = snapshot_up_to(s, v, rng, buf, taken, count)
            objects = len(gc.get_objects())
            for mode, with_policy in (("gc as is", False), ("policy", True)):
                r = measure(s, v, a.ops, with_policy, seed=count)
                for op in ("write", "read"):
                    m = r[op]
                    base_us.setdefault((mode, op), m["us"])
                    print(f"{count:>9} {mode:<10} {op:<5} {m['us']:>7.1f} {m['us'] / base_us[mode, op]:>5.2f} "
                          f"{m['gc_us']:>8.1f} {m['gc_max_ms']:>9.1f} {m['full']:>4} {objects:>9,}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
