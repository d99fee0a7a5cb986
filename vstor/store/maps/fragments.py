"""A memory budget for fragmented chunks. Pure logic, no I/O.

A chunk written in pieces keeps a list of extents in its leaf (chunkmap.py), and each extent
costs about EXTENT_BYTES of daemon memory. GC merges a chunk's pieces when it moves them,
and a chunk whose pieces average under reclaim.COMPACT_PIECE bytes is compacted, but neither bounds
the total: random 4 KiB writes can leave chunk_size / 4096 extents in every chunk of a
volume, which for a TiB is gigabytes. The maintenance loop therefore counts the extents the
pool's maps hold (``census``) and, when they exceed the budget, compacts the chunks that free
the most (``pick``) until the count is back below a low-water mark.

Invariants:
- Each distinct extent list is counted once, however many leaf versions share it.
- Only chunks whose list one volume's live map holds alone are picked: the leaf is held by
  that map only (``refs == 1``) and no other leaf holds the list. Compacting a chunk that a
  snapshot shares would copy the leaf or keep the list alive, freeing nothing, so such chunks
  are never picked, and lists that snapshots hold stay until the snapshots go.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from vstor.store.maps.chunkmap import VolumeMap

# Memory per extent: a (start, end, loc) tuple of three large ints, and its list slot
# (tracemalloc of 100,000 extents like the maps', 2026-12-02: 169.6 bytes).
EXTENT_BYTES = 170
BUDGET_BYTES = 32 << 20  # extents held by all maps; about 197,000 extents
LOW_WATER = 0.75  # compaction stops once the count would be this share of the budget


@dataclass
class Census:
    extents: int = 0  # distinct extents in every map's overlay lists
    candidates: list[tuple[int, int, int]] = field(default_factory=list)  # (extents, vid, chunk)


def census(maps: Iterable[tuple[int, VolumeMap]], lock: AbstractContextManager) -> Census:
    """Count the extents of ``maps`` ((volume id, live map), or (0, snapshot map)) and list the
    live chunks that compaction would free. Each leaf is read under ``lock`` (the store lock),
    one at a time, so writers are not held up for long."""
    out = Census()
    # Keyed by id, and holding the objects, so that no id is reused while the lock is let go.
    leaves_seen: dict[int, object] = {}
    holders: dict[int, tuple[list, int]] = {}  # id(list) -> (the list, distinct leaves holding it)
    mine: list[tuple[int, int, list]] = []  # (vid, chunk, list) in leaves only a live map holds
    for vid, vm in maps:
        with lock:
            keys = list(vm.leaves)
        for key in keys:
            with lock:
                leaf = vm.leaves.get(key)
                if leaf is None or id(leaf) in leaves_seen:
                    continue
                leaves_seen[id(leaf)] = leaf
                alone = bool(vid) and leaf.refs == 1
                for chunk, ext in leaf.overlays.items():
                    n = holders.get(id(ext), (ext, 0))[1]
                    if not n:
                        out.extents += len(ext)
                    holders[id(ext)] = (ext, n + 1)
                    if alone:
                        mine.append((vid, chunk, ext))
    out.candidates = [(len(ext), vid, chunk) for vid, chunk, ext in mine if holders[id(ext)][1] == 1]
    return out


def pick(c: Census, budget_extents: int) -> list[tuple[int, int]]:
    """(volume id, chunk) to compact, most extents first, until the count would fall to
    LOW_WATER of the budget. Empty while the count is within the budget. A compacted chunk
    keeps one extent, so each frees ``n - 1``."""
    if c.extents <= budget_extents:
        return []
    excess = c.extents - int(budget_extents * LOW_WATER)
    out = []
    for n, vid, chunk in sorted(c.candidates, reverse=True):
        if excess <= 0 or n < 2:
            break
        out.append((vid, chunk))
        excess -= n - 1
    return out
