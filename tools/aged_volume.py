"""Set-up shared by the in-process snapshot benchmarks: a pool with one aged 1 GiB volume.

The volume is filled with 1 MiB writes, then aged by random 4 KiB writes, which fragment its
chunks the way a filesystem's small writes do (many overlay extents per chunk).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from vstor.store.catalog import snapshots
from vstor.store.store import Store
from vstor.store.superblock import init_pool

VOLUME_BYTES = 1 << 30
BLOCKS = VOLUME_BYTES // 4096


@contextmanager
def aged_volume(prefix: str, age_writes: int, seed: int = 1) -> Iterator[tuple[Store, int, random.Random, bytes]]:
    """(store, volume id, the random generator the ageing used, 1 MiB of random data) for a
    new pool holding volume "v", in a temporary directory under /var/tmp named ``prefix``...;
    the store is closed and the directory removed on exit, whatever happens."""
    base = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
    try:
        init_pool(f"{base}/pool")
        s = Store.open(f"{base}/pool")
        try:
            v = s.create_volume("v", VOLUME_BYTES).id
            buf = os.urandom(1 << 20)
            for i in range(VOLUME_BYTES >> 20):
                s.write(v, i << 20, buf)
            rng = random.Random(seed)
            for _ in range(age_writes):
                s.write(v, rng.randrange(BLOCKS) * 4096, buf[:4096])
            yield s, v, rng, buf
        finally:
            s.close(checkpoint=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def snapshot_up_to(s: Store, v: int, rng: random.Random, buf: bytes, taken: int, count: int) -> int:
    """Take snapshots s{taken}..s{count-1} of volume "v", each after 16 random 4 KiB writes (so
    every snapshot holds new leaf versions, as in part 3 of tools/bench_snapshots). Returns
    the number taken so far: ``max(taken, count)``."""
    while taken < count:
        for _ in range(16):
            s.write(v, rng.randrange(BLOCKS) * 4096, buf[:4096])
        snapshots.create(s, "v", f"s{taken}")
        taken += 1
    return taken
