"""How long a write waits when the journal rolls over to a new segment, in process.

    .venv/bin/python -m tools.bench_rollover [--gib 2] [--segment-mib 64]

On a plain pool in a temporary directory under /var/tmp, one writer appends 1 MiB writes to
one volume (sequential, incompressible), as a sequential fio job does through FUSE; no sync
is asked for until the end. A rollover happens under the store lock: the full segment is made
durable and the next one created before the record that did not fit is appended, so every
writer waits for it. The tool prints the latency of the writes that rolled over against all
others (median, p99, max), the total time including the final sync, and the throughput.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

from vstor.store.store import Store
from vstor.store.superblock import init_pool

MIB = 1 << 20


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--gib", type=int, default=2, help="GiB written")
    p.add_argument("--segment-mib", type=int, default=64, help="journal segment size of the pool")
    a = p.parse_args()
    print("$ " + " ".join([sys.executable, *sys.orig_argv[1:]]), flush=True)
    base = tempfile.mkdtemp(prefix="vstor-rollover-", dir="/var/tmp")
    try:
        init_pool(f"{base}/pool", segment_size=a.segment_mib * MIB)
        s = Store.open(f"{base}/pool")
        try:
            n = a.gib * 1024
            v = s.create_volume("v", n * MIB).id
            data = os.urandom(MIB)
            rolled: list[float] = []
            other: list[float] = []
            t_start = time.perf_counter()
            for i in range(n):
                seg = s.journal.current_segno
                t0 = time.perf_counter()
                s.write(v, i * MIB, data)
                dt = (time.perf_counter() - t0) * 1e3
                (rolled if s.journal.current_segno != seg else other).append(dt)
            t_sync = time.perf_counter()
            s.sync()
            end = time.perf_counter()
        finally:
            s.close(checkpoint=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    total = end - t_start
    print(f"{n} writes of 1 MiB, {len(rolled)} rollovers; total {total:.2f} s including the final sync "
          f"({end - t_sync:.2f} s): {n * MIB / total / 1e6:.0f} MB/s")
    for label, xs in (("rollover writes", rolled), ("other writes", other)):
        if xs:
            print(f"{label:<16} n={len(xs):>5}  median {statistics.median(xs):7.2f} ms  p99 {pct(xs, 0.99):7.2f} ms  "
                  f"max {max(xs):7.2f} ms  sum {sum(xs) / 1e3:6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
