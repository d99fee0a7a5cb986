"""Cost of one GC move with 0, 100 and 1,000 snapshots of the volume.

    .venv/bin/python -m tools.bench_gc_move [--age-writes 50000] [--moves 2000] [--counts 0,100,1000]

In-process (Store API, no FUSE, no maintenance thread), on a pool in a temporary directory
under /var/tmp: a 1 GiB volume is filled with 1 MiB writes and aged by random 4 KiB writes,
and snapshots are taken as in tools/bench_snapshot_gc.py (16 random writes before each).
At each snapshot count, up to ``--moves`` extents are relocated out of one sealed segment of
the initial fill that no earlier count has touched: the moves of the reclaimer's work list
for that segment, each a ``Store.gc_move`` as ``Reclaimer.collect`` makes it. Every snapshot
still holds that data, so each move repoints every leaf version that shares it. Prints the
mean µs per move and per MiB moved, and the ratio to 0 snapshots.
"""

from __future__ import annotations

import argparse
import time

from tools.aged_volume import aged_volume, snapshot_up_to
from vstor.store.maintenance.reclaim import Reclaimer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--age-writes", type=int, default=50_000)
    p.add_argument("--moves", type=int, default=2000, help="moves timed per snapshot count")
    p.add_argument("--counts", default="0,100,1000")
    a = p.parse_args()
    counts = sorted(int(c) for c in a.counts.split(","))
    with aged_volume("vstor-gcmove-", a.age_writes) as (s, v, rng, buf):
        rec = Reclaimer(s)
        segments = s.journal.segments()[1 : 1 + len(counts)]  # the fill's; the first also holds pool set-up
        taken, base = 0, None
        print(f"aged 1 GiB volume ({a.age_writes} random 4 KiB writes); target segments {segments}")
        for count, seg in zip(counts, segments, strict=False):
            taken = snapshot_up_to(s, v, rng, buf, taken, count)
            # The reclaimer's own work list for the segment; only its moves, each a
            # Store.gc_move as Reclaimer.collect makes it (compactions are another cost).
            work = [w for w in rec._work({seg}) if w[0] == "move"][: a.moves]
            t0 = time.perf_counter()
            moved = sum(s.gc_move(start, end, loc) for _, start, end, loc in work)
            dt = time.perf_counter() - t0
            per_move = dt / max(1, len(work)) * 1e6
            per_mib = dt / max(1, moved) * (1 << 20) * 1e6
            base = base or per_move
            print(f"{count:>5} snapshots: {len(work)} moves, {moved / 2**20:.1f} MiB in {dt:.2f} s: "
                  f"{per_move:.0f} us per move, {per_mib:.0f} us per MiB moved ({per_move / base:.2f} of 0 snapshots)",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
