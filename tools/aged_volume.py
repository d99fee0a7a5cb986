"""Set-up shared by the in-process snapshot benchmarks: a pool with one aged 1 GiB volume.

The volume is filled with 1 MiB writes, then aged by random 4 KiB writes, which fragment its
chunks the way a filesystem's small writes do (many overlay extents per chunk).
"""

from __future__ import annotations

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vstor.store.store import Store  # noqa: E402
from vstor.store.superblock import init_pool  # noqa: E402

VOLUME_BYTES = 1 << 30
BLOCKS = VOLUME_BYTES // 4096


def aged_volume(base: str, age_writes: int, seed: int = 1) -> tuple[Store, int, random.Random, bytes]:
    """(store, volume id, the random generator the ageing used, 1 MiB of random data) for a
    new pool at ``base``/pool holding volume "v"."""
    init_pool(f"{base}/pool")
    s = Store.open(f"{base}/pool")
    v = s.create_volume("v", VOLUME_BYTES).id
    buf = os.urandom(1 << 20)
    for i in range(VOLUME_BYTES >> 20):
        s.write(v, i << 20, buf)
    rng = random.Random(seed)
    for _ in range(age_writes):
        s.write(v, rng.randrange(BLOCKS) * 4096, buf[:4096])
    return s, v, rng, buf
