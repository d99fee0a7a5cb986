"""Cost of one 1 MiB volume read as the FUSE callback serves it, stock against in place.

    .venv/bin/python -m tools.bench_read_into [--passes 5]

In-process (Store API, no FUSE), on a plain pool in a temporary directory under /var/tmp: a
1 GiB volume is written with 1 MiB writes, then read sequentially in 1 MiB requests into a
buffer allocated with malloc, as libfuse allocates the one it passes to the read callback:

- "read + memmove": ``Store.read`` returns bytes that are copied into the buffer, which is
  what mfusepy's stock read callback does;
- "read_into": ``Store.read_into`` fills the buffer in place (vstor/fuse/direct.py).

The two alternate pass by pass over the same data, which stays in the page cache after the
first pass (the first pass of each is not counted), so the figures are the CPU cost per
request without the disk. Prints the median µs per request and the ratio.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import sys
import tempfile
import time

from vstor.store.store import Store
from vstor.store.superblock import init_pool

MIB = 1 << 20
VOLUME = 1 << 30


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--passes", type=int, default=5, help="timed passes of each kind (after one warm-up each)")
    a = p.parse_args()
    print("$ " + " ".join([sys.executable, *sys.orig_argv[1:]]), flush=True)
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    addr = libc.malloc(MIB)
    view = memoryview((ctypes.c_char * MIB).from_address(addr)).cast("B")
    base = tempfile.mkdtemp(prefix="vstor-readinto-", dir="/var/tmp")
    try:
        init_pool(f"{base}/pool", compress="none")
        s = Store.open(f"{base}/pool")
        try:
            v = s.create_volume("v", VOLUME).id
            data = os.urandom(MIB)
            for i in range(VOLUME // MIB):
                s.write(v, i * MIB, data)
            s.sync()

            def stock() -> None:
                for i in range(VOLUME // MIB):
                    got = s.read(v, i * MIB, MIB)
                    assert isinstance(got, bytes)  # a local pool's read: ctypes.memmove takes no memoryview
                    ctypes.memmove(addr, got, len(got))

            def in_place() -> None:
                for i in range(VOLUME // MIB):
                    s.read_into(v, i * MIB, view)

            times: dict[str, list[float]] = {"read + memmove": [], "read_into": []}
            for k in range(a.passes + 1):
                for label, fn in (("read + memmove", stock), ("read_into", in_place)):
                    t0 = time.perf_counter()
                    fn()
                    if k:
                        times[label].append((time.perf_counter() - t0) / (VOLUME // MIB) * 1e6)
            med = {k: statistics.median(x) for k, x in times.items()}
            for label, xs in times.items():
                print(f"{label:<15} median {med[label]:7.1f} us per 1 MiB read   passes: "
                      f"{', '.join(f'{x:.0f}' for x in xs)}")
            print(f"read_into / read + memmove: {med['read_into'] / med['read + memmove']:.2f}")
        finally:
            s.close(checkpoint=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
