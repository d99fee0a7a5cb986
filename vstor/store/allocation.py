"""Which ranges of a volume (or of a snapshot's image of it) hold data: the allocation that
NBD block status reports. Everything else reads as zeros and holds no space."""

from __future__ import annotations

from typing import Any

from vstor.errors import NotFound


def mapped_ranges(store: Any, vid: int, start: int, end: int, sid: int = 0) -> list[tuple[int, int]]:
    """Merged, ordered (start, end) of the mapped pieces of [start, end) of volume ``vid``, or of
    its image in snapshot ``sid``. A lookup of the chunk map under the store lock, no I/O."""
    with store.locked():
        vm = store.state.snap_maps.get((sid, vid)) if sid else store.state.maps.get(vid)
        if vm is None:
            raise NotFound(f"volume {vid}" + (f" in snapshot {sid}" if sid else "") + " no longer exists")
        pieces = vm.lookup(start, end)
    out: list[tuple[int, int]] = []
    for s, e, _loc in pieces:
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out
