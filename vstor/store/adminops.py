"""Admin operations on the map that must not stall I/O: shrink, delete and trim of huge ranges.

A mixin of Store (store.py). Their cost follows the mapped data, not the virtual size: the
map is walked leaf by leaf (VolumeMap.leaf_keys), never chunk by chunk over the range. When
there is much mapped data they work in bounded steps and release the store lock in between,
so host I/O and other admin commands wait for one step at most:

* shrink and delete first cut the volume down from its top with ``resize`` events, each
  dropping at most STEP_LEAVES leaves, and then journal the requested resize or delete. Every
  step is an ordinary catalog event, so replay reproduces each state exactly. An interrupted
  shrink or delete leaves the volume at a size in between; repeating the command finishes it.
* a trim journals one REC_TRIM record per MAX_RECORD piece that holds mapped data, exactly as
  before; it examines at most STEP_PIECES pieces per hold of the lock.

``progress(done, total)`` is called after each step with the bytes of the range dealt with and
the range's size (control requests forward it to the CLI).
The fault point ``store.admin_step`` is hit between steps, outside the lock (tests arm a
``delay`` there to make an operation long).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from itertools import islice

from vstor.store.catalog.volumes import Volume
from vstor.store.journal.format import MAX_RECORD, REC_TRIM
from vstor.store.maps.chunkmap import LEAF_SLOTS
from vstor.store.storeparts import StoreParts

Progress = Callable[[int, int], None] | None


class AdminOpsMixin(StoreParts):
    STEP_LEAVES = 256  # leaves a shrink or delete step drops (a few ms under the lock)
    STEP_PIECES = 128  # MAX_RECORD pieces a trim step examines (two 512 MiB leaves)

    # -- shrink and delete -------------------------------------------------------------------
    def resize_volume(self, name: str, size: int, allow_shrink: bool = False, progress: Progress = None) -> Volume:
        with self._lock:
            vid = self.state.table.make_resize(name, size, allow_shrink)["id"]  # refuse before any step
        self._cut_down(vid, size, progress)
        ev = self.event(lambda st: st.table.make_resize(name, size, allow_shrink))
        return self.state.table.by_id[ev["id"]]

    def delete_volume(self, name: str, progress: Progress = None) -> Volume:
        with self._lock:
            self.state.make_volume_delete(name)  # refuse before any step
            vol = dataclasses.replace(self.state.table.get(name))  # as it was, not as the steps leave it
        self._cut_down(vol.id, 0, progress)
        self.event(lambda st: st.make_volume_delete(name))
        return vol

    def _cut_down(self, vid: int, size: int, progress: Progress) -> None:
        """Shrink volume ``vid`` towards ``size`` with resize events of at most STEP_LEAVES
        leaves each, from the top, until the rest fits in one step (left to the caller's event).
        Each step is journaled (not synced: the caller's final event syncs them all)."""
        span = LEAF_SLOTS * self.sb.chunk_size
        top = -1
        while True:
            with self._lock:
                vol = self.state.table.by_id_or_none(vid)
                if vol is None or vol.size <= size:
                    return
                top = vol.size if top < 0 else top
                keys = self.state.maps[vid].leaf_keys(size, vol.size)
                if len(keys) <= self.STEP_LEAVES:
                    return
                cut = keys[-self.STEP_LEAVES] * span
                self._log_event({"op": "resize", "id": vid, "size": cut})
            if progress is not None:
                progress(top - cut, top - size)
            self.faults.hit("store.admin_step")

    # -- trim --------------------------------------------------------------------------------
    def _trim(self, vid: int, offset: int, length: int, forced_seq: int, progress: Progress = None) -> None:
        """Unmap [offset, offset + length), journaled as one REC_TRIM record per MAX_RECORD
        piece (counted from ``offset``) that holds mapped data. ``forced_seq``: -1 for a host
        trim, 0 for replication copy data, > 0 for a replicated trim (one record, at most
        MAX_RECORD, always journaled with its sequence number)."""
        self.stats.add(trims=1)
        if forced_seq > 0:
            with self._lock:
                vol = self._volume(vid)
                self._append(REC_TRIM, vol.group, vid, forced_seq, offset, length, [], [], use_reserve=True)
                self.state.group_seq[vol.group] = forced_seq
                end = min(offset + length, vol.size)
                if end > offset:
                    self.state.maps[vid].unmap(offset, end)
            return
        pieces: Iterator[int] | None = None
        trimmed = 0
        while True:
            if pieces is not None:
                self.faults.hit("store.admin_step")
            with self._lock:
                vol = self._volume(vid)
                end = min(offset + length, vol.size)
                if forced_seq < 0:
                    self._check_fence(vid)
                vm = self.state.maps[vid]
                if pieces is None:
                    keys = vm.leaf_keys(offset, end)
                    pieces = _pieces(keys, offset, end, LEAF_SLOTS * self.sb.chunk_size)
                batch = list(islice(pieces, self.STEP_PIECES))
                for i in batch:
                    start = offset + i * MAX_RECORD
                    stop = min(start + MAX_RECORD, end)
                    if stop <= start:
                        batch = []  # the volume shrank under the trim: nothing is left past its end
                        break
                    if not vm.lookup(start, stop):
                        continue
                    seq = self.state.group_seq[vol.group] + 1 if forced_seq < 0 else 0  # 0: copy data
                    self._append(REC_TRIM, vol.group, vid, seq, start, stop - start, [], [], use_reserve=True)
                    if seq:
                        self.state.group_seq[vol.group] = seq
                    vm.unmap(start, stop)
                    trimmed = end - offset
            if len(batch) < self.STEP_PIECES:
                break
            if progress is not None:
                progress(min(end, offset + (batch[-1] + 1) * MAX_RECORD) - offset, end - offset)
        if trimmed:
            self.stats.add(trim_bytes=trimmed)


def _pieces(keys: list[int], offset: int, end: int, span: int) -> Iterator[int]:
    """Indexes (from ``offset``, in MAX_RECORD steps) of the pieces of [offset, end) that meet
    the leaves ``keys`` (sorted), each once, in order."""
    last = -1
    for key in keys:
        first = max(0, (key * span - offset) // MAX_RECORD, last + 1)
        last = (min(end, (key + 1) * span) - 1 - offset) // MAX_RECORD
        yield from range(first, last + 1)
