"""Defragmentation: rewriting a volume's scattered ranges in logical order (issue 25).

The journal is the data, so small random overwrites scatter a volume's pieces over the
segments written meanwhile, and a sequential read of the aged volume becomes many small
reads (docs/benchmarks.md section 9). This rewrites such ranges: each *window* of
``window`` bytes (1 MiB, one FUSE read) whose mapped pieces number more than
``max_pieces`` is read and appended again as one compaction record (REC_RELOCATE with no old
location, Store.compact), so that the window becomes one piece and consecutive windows lie
one after another in the journal. The old pieces become dead space that GC reclaims.

Two sources of work, both run from the maintenance tick (maintloop.py):
  * hints (read-triggered, after NetApp WAFL's read reallocation): a host read that found
    many pieces in its range names its windows (``hint``); they are rewritten first once the
    host pauses (or, with ``busy_hint_bytes``, that much a tick during reads alone);
  * the idle sweep (locality-aware compaction): in ticks with no host I/O at all since the
    last one, each volume is walked in logical order from a cursor, within ``seconds_per_tick``
    and stopping at once when a host request arrives, so host I/O keeps priority. A sweep that
    finds nothing waits for new host writes before it starts again.

What holds:
  * space: a rewrite takes new space until GC frees the old pieces, so nothing is rewritten
    while the pool has less than ROOM_NEEDED free beyond its reserve (and never from it);
  * crash safety and the durability contract: a rewrite is an ordinary journal record made
    under the store lock only if the window's pieces are still those that were read (a host
    write meanwhile wins); replay applies it in journal order, like a compaction;
  * replication order: journal consumers skip REC_RELOCATE records (consumers.py);
  * snapshots: a window is rewritten only when no other map (snapshot, clone, origin)
    references a record of it, so defragmentation never duplicates shared data; windows that
    share are skipped and counted (``defrag_shared_skipped``);
  * no hole is filled: only runs of mapped pieces are rewritten, each as its own record.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from vstor.store.maintenance.activity import HostActivity
from vstor.store.maps.chunkmap import FRAGMENTED, LEAF_BITS, LEAF_MASK, VolumeMap

__all__ = ["Defragmenter", "WINDOW", "MAX_PIECES"]

WINDOW = 1 << 20  # bytes rewritten as one record: a FUSE read's largest request
MAX_PIECES = 4  # a window with more mapped pieces than this is rewritten
MAX_HINTS = 4096  # windows remembered from reads (oldest dropped first)
ROOM_NEEDED = 256 << 20  # free space (beyond the pool's reserve) below which defragmentation waits


class Defragmenter:
    """Finds and rewrites a store's scattered windows. ``store`` is a Store; it is given, never
    built here. Counters go to ``store.stats`` (defrag_*)."""

    def __init__(self, store: Any, window: int = WINDOW, max_pieces: int = MAX_PIECES,
                 seconds_per_tick: float = 0.5, busy_hint_bytes: int = 0,
                 scan_windows_per_tick: int = 4096) -> None:
        if window <= 0 or window % store.sb.chunk_size and store.sb.chunk_size % window:
            raise ValueError("the defrag window must be a multiple or a divisor of the chunk size")
        self.store = store
        self.window = window
        self.max_pieces = max_pieces
        self.seconds_per_tick = seconds_per_tick
        self.busy_hint_bytes = busy_hint_bytes
        self.scan_windows_per_tick = scan_windows_per_tick
        self.enabled = True
        self._hints: OrderedDict[tuple[int, int], None] = OrderedDict()  # (vid, window start)
        self._hints_lock = threading.Lock()  # FUSE threads add, the maintenance thread takes
        self._cursor: dict[int, int] = {}  # vid -> next window start of the sweep
        self._queue: list[int] = []  # volumes the current sweep has still to walk, the next last
        self._swept_at = -1  # the volumes' changes (HostActivity) when a whole sweep last found nothing
        self._found_in_sweep = False
        self.activity = HostActivity.of(store)  # host I/O since the last tick
        self.state = "idle"  # for the status: idle, sweeping, waiting for host I/O to stop
        store.defrag_hint = self.hint

    # -- hints from the read path ---------------------------------------------------------
    def hint(self, vid: int, offset: int, size: int, pieces: int) -> None:
        """A host read of [offset, offset+size) of volume ``vid`` found ``pieces`` pieces; called
        by the read path (readpath.py) without the store lock."""
        if not self.enabled or pieces * self.window <= self.max_pieces * max(size, self.window):
            return
        w = self.window
        with self._hints_lock:
            for start in range(offset // w * w, offset + size, w):
                self._hints[(vid, start)] = None
                if len(self._hints) > MAX_HINTS:
                    self._hints.popitem(last=False)
        self.store.stats.add(defrag_hints=1)

    # -- the maintenance step ---------------------------------------------------------------
    def tick(self) -> int:
        """One maintenance pass. Returns the bytes rewritten.

        In a tick with no host I/O since the last one: first the windows host reads found
        scattered, then the sweep, within ``seconds_per_tick`` and stopping as soon as a host
        request arrives. In a tick with host reads but no writes, at most ``busy_hint_bytes``
        of hinted windows (default 0: rewriting during a read stream took CPU from it, and
        from the random reads that followed; benchmarks section 9)."""
        act = self.activity.look()
        if not self.enabled or act.wrote:
            self.state = "waiting for host writes to stop" if self.enabled else "off"
            return 0
        if not self.store.space.has_room(ROOM_NEEDED):  # a rewrite needs room until GC frees the old
            self.state = "paused: the pool is nearly full"
            return 0
        if act.busy:
            self.state = "waiting for host I/O to stop"
            return self._do_hints(self.busy_hint_bytes, None) if self.busy_hint_bytes else 0
        deadline = time.perf_counter() + self.seconds_per_tick
        moved = self._do_hints(None, deadline)
        if self._hints:
            self.state = "rewriting windows host reads found scattered"
            return moved
        return moved + self._sweep(deadline)

    def _do_hints(self, max_bytes: int | None, deadline: float | None) -> int:
        moved = 0
        while max_bytes is None or moved < max_bytes:
            if deadline is not None and (time.perf_counter() > deadline or self._host_io()):
                break
            with self._hints_lock:
                if not self._hints:
                    break
                (vid, start), _ = self._hints.popitem(last=False)
            moved += self.defrag_window(vid, start)
        return moved

    def _host_io(self) -> bool:
        return self.activity.moved()

    def _sweep(self, deadline: float) -> int:
        """Walk the volumes in logical order, each from its cursor, until the time budget is
        spent or host I/O arrives; returns the bytes rewritten. A sweep that rewrote nothing
        is not begun again until the host writes."""
        st = self.store
        if not self._queue:
            if self.activity.counters()[1] == self._swept_at:
                self.state = "idle: every volume is in order"
                return 0
            with st.locked():
                self._queue = sorted(st.state.maps, reverse=True)  # popped from the end
            self._found_in_sweep = False
        self.state = "sweeping"
        moved = scanned = 0
        while self._queue:
            vid = self._queue[-1]
            at = self._cursor.get(vid, 0)
            while True:
                if time.perf_counter() > deadline or self._host_io() or scanned >= self.scan_windows_per_tick:
                    return moved
                start = self._next_mapped(vid, at)
                if start is None:
                    break
                scanned += 1
                n = self.defrag_window(vid, start)
                self._found_in_sweep = self._found_in_sweep or n > 0
                moved += n
                at = self._cursor[vid] = start + self.window
            self._cursor.pop(vid, None)
            self._queue.pop()
        if not self._found_in_sweep:
            self._swept_at = self.activity.counters()[1]
            self.state = "idle: every volume is in order"
        return moved

    def _next_mapped(self, vid: int, at: int) -> int | None:
        """The first window at or after ``at`` that holds a leaf of ``vid``'s map, or None."""
        st = self.store
        with st.locked():
            vm = st.state.maps.get(vid)
            vol = st.state.table.by_id_or_none(vid)
            if vm is None or vol is None or at >= vol.size:
                return None
            keys = vm.leaf_keys(at, vol.size)
        if not keys:
            return None
        span = (1 << LEAF_BITS) * st.sb.chunk_size
        first = max(at, keys[0] * span)
        return first // self.window * self.window

    # -- one window ---------------------------------------------------------------------
    def defrag_window(self, vid: int, start: int) -> int:
        """Rewrite the window at ``start`` of volume ``vid`` if it is scattered and shares
        nothing; returns the bytes rewritten (0 if it was left alone)."""
        st = self.store
        with st.locked():
            vm = st.state.maps.get(vid)
            vol = st.state.table.by_id_or_none(vid)
            if vm is None or vol is None:
                return 0
            end = min(start + self.window, vol.size)
            pieces = vm.lookup(start, end) if end > start else []
            if len(pieces) <= self.max_pieces:
                return 0
            if self._shared(vid, vm, start, end, pieces):
                st.stats.add(defrag_shared_skipped=end - start)
                return 0
        moved = 0
        for run in _runs(pieces):
            moved += self._rewrite(vid, vm, run)
        if moved:
            st.stats.add(defrag_windows=1, defrag_bytes=moved)
        return moved

    def _rewrite(self, vid: int, vm: VolumeMap, run: list) -> int:
        """Rewrite one run of adjacent pieces as one record (Store.compact checks, under the
        lock, that they are still those that were read)."""
        st = self.store
        if len(run) < 2:
            return 0
        s, e = run[0][0], run[-1][1]
        pieces = st.lookup_for_read(vm, s, e - s)
        try:
            if pieces != run:
                return 0
            data = st.assemble(vm.lineage, s, e - s, pieces)
        finally:
            st.done_reading()
        st.journal.faults.hit("defrag.rewrite")
        return e - s if st.compact(vid, s, data, pieces) else 0

    def _shared(self, vid: int, vm: VolumeMap, start: int, end: int, pieces: list) -> bool:
        """True if a map other than ``vid``'s live map may reference a record of the window
        (caller holds the store lock): the live map's leaf is shared, or another map whose
        lineage meets this one's holds one of the window's records in the same chunks."""
        st = self.store
        cs = st.sb.chunk_size
        keys = range(start // cs >> LEAF_BITS, ((end - 1) // cs >> LEAF_BITS) + 1)
        if any(vm.leaves[k].refs > 1 for k in keys if k in vm.leaves):
            return True
        lineage = set(vm.lineage)
        others = [m for m in st.state.all_maps() if m is not vm and lineage.intersection(m.lineage)]
        if not others:
            return False
        locs = {p[2] for p in pieces}
        for chunk in range(start // cs, (end - 1) // cs + 1):
            for m in others:
                leaf = m.leaves.get(chunk >> LEAF_BITS)
                if leaf is None:
                    continue
                slot = leaf.slots[chunk & LEAF_MASK]
                if slot in locs or (slot == FRAGMENTED and any(x[2] in locs for x in leaf.overlays[chunk])):
                    return True
        return False

    def describe(self) -> dict:
        """For the array status."""
        return {"enabled": self.enabled, "state": self.state, "hints_pending": len(self._hints),
                "window": self.window, "max_pieces": self.max_pieces}


def _runs(pieces: list) -> list[list]:
    """``pieces`` cut at each hole: runs of adjacent pieces."""
    out: list[list] = []
    for p in pieces:
        if out and out[-1][-1][1] == p[0]:
            out[-1].append(p)
        else:
            out.append([p])
    return out
