"""The CPU cost of one 4 KiB random write, in process, against a bare pwrite.

    .venv/bin/python -m tools.bench_small_write [--writes 200000] [--rounds 5] [--compress lz4|none]
                                                [--encrypt] [--profile]

fio's 4 KiB random write at QD1 through FUSE is bound by the CPU time of each request: the
kernel's round trip and mfusepy's callback are the same for the passthrough and for vstor,
so what vstor adds is the time of its write handler. This tool measures that handler
without the kernel, on a pool in a temporary directory under /var/tmp:

* ``pwrite``: ``os.pwrite`` of 4 KiB at a random offset of a preallocated 2 GiB file (what
  the passthrough's handler does);
* ``store``: ``Store.write`` of 4 KiB at a random 4 KiB-aligned offset of a 2 GiB volume
  that was first filled with 1 MiB writes (as fio's sequential write leaves it);
* ``fuse op``: the same through ``VolumeFS.write``, the FUSE handler (its checks and counters).

Rounds alternate between the three; the figure is the median round's mean time per write
(µs), and "added" is each one minus ``pwrite``. ``--profile`` prints cProfile's top entries of
one extra ``store`` round.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from tools.benchlib.timing import Timer
from vstor.fuse.ops import VolumeFS
from vstor.store.store import Store
from vstor.store.superblock import init_pool

SIZE = 2 << 30
BLOCK = 4096


def per_call_us(n: int, offsets: list[int], fn: Callable[[int], object]) -> float:
    """Mean µs per call of ``fn(offset)`` over the first ``n`` offsets."""
    with Timer() as t:
        for off in offsets[:n]:
            fn(off)
    return t.ns / n / 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--writes", type=int, default=200_000, help="writes per round and kind (default 200000)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--compress", choices=("lz4", "none"), default="none")
    p.add_argument("--encrypt", action="store_true", help="AES-256-GCM with a generated key file")
    p.add_argument("--profile", action="store_true")
    a = p.parse_args()
    print("$ " + " ".join([sys.executable, *sys.orig_argv[1:]]), flush=True)
    base = Path(tempfile.mkdtemp(prefix="vstor-smallw-", dir="/var/tmp"))
    store: Store | None = None
    fd = -1
    try:
        key = None
        if a.encrypt:
            key = str(base / "key")
            Path(key).write_bytes(os.urandom(32))
        init_pool(str(base / "pool"), compress=a.compress, encrypt=a.encrypt, key_file=key)
        store = Store.open(str(base / "pool"), key)
        vid = store.create_volume("v", SIZE).id
        fill = os.urandom(1 << 20)
        for off in range(0, SIZE, len(fill)):
            store.write(vid, off, fill)
        store.sync()
        fd = os.open(base / "flat", os.O_RDWR | os.O_CREAT, 0o600)
        os.posix_fallocate(fd, 0, SIZE)
        ops = VolumeFS(store)
        fi = SimpleNamespace(fh=0, flags=os.O_RDWR, direct_io=0)
        ops.open("/volumes/v", fi)
        rng = random.Random(1)
        data = os.urandom(BLOCK)
        kinds: dict[str, Callable[[int], object]] = {
            "pwrite": lambda off: os.pwrite(fd, data, off),
            "store": lambda off: store.write(vid, off, data),
            "fuse op": lambda off: ops.write("/volumes/v", data, off, fi),
        }
        got: dict[str, list[float]] = {k: [] for k in kinds}
        for r in range(a.rounds):
            for kind, fn in kinds.items():
                offsets = [rng.randrange(SIZE // BLOCK) * BLOCK for _ in range(a.writes)]
                got[kind].append(per_call_us(a.writes, offsets, fn))
            store.sync()
            os.fdatasync(fd)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} µs" for k, v in got.items()), flush=True)
        med = {k: statistics.median(v) for k, v in got.items()}
        print(f"\n4 KiB random write, µs per write (median of {a.rounds} rounds of {a.writes}), "
              f"compress {a.compress}, encrypt {'on' if a.encrypt else 'off'}:")
        for k, v in med.items():
            added = "" if k == "pwrite" else f"   added {v - med['pwrite']:.1f} µs"
            print(f"  {k:<8} {v:7.1f}{added}")
        if a.profile:
            offsets = [rng.randrange(SIZE // BLOCK) * BLOCK for _ in range(a.writes)]
            prof = cProfile.Profile()
            prof.runcall(per_call_us, a.writes, offsets, kinds["store"])
            pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    finally:
        if fd >= 0:
            os.close(fd)
        if store is not None:
            store.close(checkpoint=False)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
