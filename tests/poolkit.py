"""Helpers shared by the store unit tests (no FUSE, no root)."""

from __future__ import annotations

import os

from vstor.store.format import segment_name
from vstor.store.superblock import init_pool

MiB = 1 << 20
SEG = 16 * MiB


def make_pool(tmp_path, **kw) -> str:
    """A fresh pool with 16 MiB segments; an encrypted one gets a key file beside it."""
    pool = str(tmp_path / "pool")
    if kw.get("encrypt"):
        kw.setdefault("key_file", str(tmp_path / "key"))
    init_pool(pool, segment_size=SEG, **kw)
    return pool


def seg_path(pool: str, segno: int) -> str:
    return os.path.join(pool, "journal", segment_name(segno))
