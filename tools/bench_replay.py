"""Journal replay speed: the time ``array start`` spends recovering after a crash.

    .venv/bin/python -m tools.bench_replay [--mib 1024]

For each pool variant (plain, lz4, aes) and record size (1 MiB sequential writes, 4 KiB
random writes), it writes --mib MiB through the Store with no checkpoint, closes only the
journal (as kill -9 leaves it), drops the page cache, and times Store.open, which replays
every record. It prints records/s and MB/s of journal replayed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any

from vstor.store.store import Store
from vstor.store.superblock import init_pool

MiB = 1 << 20


def one(base: str, variant: str, record: int, total: int) -> dict:
    pool = os.path.join(base, f"{variant}-{record}")
    opts: dict[str, Any] = {"compress": "lz4"} if variant == "lz4" else {}
    if variant == "aes":
        opts = {"encrypt": True, "key_file": os.path.join(base, f"key-{record}")}
    init_pool(pool, segment_size=256 * MiB, **opts)
    st = Store.open(pool)
    size = max(total, 64 * MiB) * (4 if record < MiB else 1)
    v = st.create_volume("v", size)
    data = os.urandom(record)
    rnd = random.Random(1)
    for i in range(total // record):
        off = i * record if record >= MiB else rnd.randrange(size // 4096) * 4096
        st.write(v.id, off, data)
    st.sync()
    st.journal.close()  # crash-like: nothing after the checkpoint taken at creation
    os.system("sync; echo 3 > /proc/sys/vm/drop_caches")
    t0 = time.monotonic()
    st2 = Store.open(pool)
    dt = time.monotonic() - t0
    rec = st2.recovery
    st2.close()
    return {"records": rec["records"], "bytes": rec["bytes"], "seconds": round(dt, 3),
            "records_per_s": round(rec["records"] / dt), "mb_per_s": round(rec["bytes"] / 1e6 / dt, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=1024, help="MiB written for the 1 MiB case (4 KiB case: a quarter)")
    p.add_argument("--workdir", default="/var/tmp")
    a = p.parse_args()
    print("$ " + " ".join([os.path.relpath(sys.executable), *sys.orig_argv[1:]]), flush=True)
    base = tempfile.mkdtemp(prefix="vstor-replay-", dir=a.workdir)
    try:
        cols = ("record", 7), ("records", 9), ("MiB", 7), ("seconds", 8), ("records/s", 10), ("MB/s", 8)
        print(f"{'variant':8s} " + " ".join(f"{name:>{w}s}" for name, w in cols))
        for variant in ("plain", "lz4", "aes"):
            for record, total in ((MiB, a.mib * MiB), (4096, a.mib * MiB // 4)):
                r = one(base, variant, record, total)
                print(f"{variant:8s} {record // 1024:>6d}K {r['records']:>9,} {r['bytes'] / MiB:>7.0f} "
                      f"{r['seconds']:>8.2f} {r['records_per_s']:>10,} {r['mb_per_s']:>8.1f}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
