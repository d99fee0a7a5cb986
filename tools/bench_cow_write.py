"""The cost of the first write to a map leaf after a snapshot (copy-on-write of the leaf).

    .venv/bin/python -m tools.bench_cow_write [--age-writes 150000] [--rounds 5]

In-process (Store API) on a pool in a temporary directory under /var/tmp: a 1 GiB volume is
filled with 1 MiB writes, aged by random 4 KiB writes (which fragment its chunks), then in
each round a snapshot is taken and four 4 KiB writes are timed, two per leaf: the first one
to each leaf copies it and counts its references, the others do not.
"""

from __future__ import annotations

import argparse
import sys
import time

from tools.aged_volume import aged_volume
from vstor.store.catalog import snapshots


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--age-writes", type=int, default=150_000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    print("$ " + " ".join([sys.executable, *sys.orig_argv[1:]]))
    with aged_volume("vstor-cow-", a.age_writes) as (s, v, rng, buf):
        leaves = s.state.maps[v].leaves
        extents = sum(len(x) for leaf in leaves.values() for x in leaf.overlays.values())
        print(f"aged by {a.age_writes} random 4 KiB writes: {len(leaves)} leaves, {extents} overlay extents")
        for n in range(a.rounds):
            snapshots.create(s, "v", f"s{n}")
            times = []
            for k in range(4):
                off = (k % 2) * (512 << 20) + rng.randrange(1 << 17) * 4096
                t0 = time.perf_counter()
                s.write(v, off, buf[:4096])
                times.append((time.perf_counter() - t0) * 1e3)
            print(f"round {n}: writes after the snapshot (ms, leaf 0, leaf 1, leaf 0, leaf 1): "
                  + " ".join(f"{t:.2f}" for t in times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
