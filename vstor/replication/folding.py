"""Folding: unshipped journal records of a pair become dirty-bitmap bits.

The invariant it keeps (reference §3 (d)): every write acknowledged to a host is either in
the journal after the pair's consumer, or in the pair's dirty bitmap. So the bitmap is saved
durably *before* the consumer moves past the records folded into it.
"""

from __future__ import annotations

from typing import Any

from vstor.replication.bitmap import DirtyBitmap
from vstor.replication.pairstate import Pair
from vstor.store.journal.consumers import read_group


def consumer_name(group: str) -> str:
    """The journal consumer of the pair of ``group``."""
    return f"repl:{group}"


def fold(mgr: Any, pair: Pair) -> None:
    """Move every durable record of the pair's group after its consumer into the dirty bitmap,
    saved durably, then let the journal go (the consumer moves only after the save)."""
    store, name = mgr.store, consumer_name(pair.group)
    gid = mgr.gid(pair)
    maps = mgr.bitmaps.setdefault(pair.group, {})
    sizes = {m["id"]: m["size"] for m in mgr.members(pair)}
    while name in store.consumers.positions():
        start = store.consumers.position(name)
        entries, end = read_group(store, start, gid, max_bytes=256 << 20, want_data=False)
        if end <= start:
            return
        for e in entries:
            if e.volume in sizes:
                maps.setdefault(e.volume, DirtyBitmap(sizes[e.volume])).mark(e.offset, e.length)
        mgr.registry.save_bitmap(pair.group, maps)
        store.consumers.commit(name, end)
