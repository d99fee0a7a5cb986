"""Garbage collection and compaction, and the maintenance loop that drives them.

A segment's *live* bytes are those the chunk maps still reference. When a sealed
segment's live share falls below ``1 - min_dead``, GC rewrites each chunk that references
it as one REC_RELOCATE record at the journal head, which also merges fragmented chunks.
The emptied segment is deleted by the next checkpoint, once no checkpoint, consumer or
in-flight read can need it (see Store._delete_dead_segments).

The maintenance loop, driven by an injected clock:
  * commit: fdatasync the journal every ``commit_interval`` seconds while it is dirty, which
    bounds what an un-fsynced crash can lose and the dirty page cache;
  * checkpoint: after ``checkpoint_bytes`` of journal or ``checkpoint_interval`` seconds;
  * GC: when the dead share of sealed segments exceeds ``min_dead``, moving at most
    ``bytes_per_tick`` per pass (32 MiB a second), so host I/O keeps priority; when the pool
    runs out of space, ``reclaim_now`` works without that limit.
"""

from __future__ import annotations

import logging
import threading

from vstor.clock import Clock, SystemClock
from vstor.errors import VstorError
from vstor.store.chunkmap import LEAF_BITS, LEAF_SLOTS
from vstor.store.format import loc_segno

log = logging.getLogger("vstor.reclaim")
MAX_FRAGMENTS = 64


class Reclaimer:
    def __init__(self, store: object, clock: Clock | None = None, commit_interval: float = 1.0,
                 checkpoint_interval: float = 60.0, checkpoint_bytes: int = 512 << 20,
                 min_dead: float = 0.5, bytes_per_tick: int = 32 << 20) -> None:
        from vstor.store.store import Store

        assert isinstance(store, Store)
        self.store = store
        self.clock = clock or SystemClock()
        self.commit_interval = commit_interval
        self.checkpoint_interval = checkpoint_interval
        self.checkpoint_bytes = checkpoint_bytes
        self.min_dead = min_dead
        self.bytes_per_tick = bytes_per_tick  # background GC/compaction budget, so host I/O keeps priority
        self._stop = threading.Event()
        self._run_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_ckpt = self.clock.monotonic()
        self.last_error = ""
        store.reclaimer = self

    # -- GC --------------------------------------------------------------------------------
    def candidates(self) -> set[int]:
        st = self.store
        with st._lock:
            cur = st.journal.current_segno
            out = set()
            for s in st.journal.segments():
                size = st.state.seg_logical.get(s, 0)  # logical, like live: compression does not skew it
                live = st.state.live.get(s, 0)
                if s < cur and size > 0 and 0 < live <= (1 - self.min_dead) * size:
                    out.add(s)
            return out

    def collect(self, targets: set[int] | None = None, max_bytes: int | None = None) -> int:
        """Relocate the live data of ``targets`` (default: the candidates) and compact chunks
        that are too fragmented. Returns the bytes rewritten, stopping once ``max_bytes`` is
        reached (the maintenance loop's per-tick budget; the rest waits for later ticks).

        GC moves only the extents that live in a target segment, each as its own record, so it
        rewrites what is live there and nothing more. A chunk with more than MAX_FRAGMENTS
        extents is instead rewritten whole, once, which merges its fragments."""
        targets = self.candidates() if targets is None else targets
        st = self.store
        moved = 0
        for vid, chunk in self._chunks_to_move(targets):
            if max_bytes is not None and moved >= max_bytes:
                break
            with st._lock:
                vol = st.state.table.by_id_or_none(vid)
                vm = st.state.maps.get(vid)
                if vol is None or vm is None:
                    continue
                base = chunk * st.sb.chunk_size
                extents = vm.chunk_extents(chunk)
            if len(extents) > MAX_FRAGMENTS:
                ranges = [(base, min(base + st.sb.chunk_size, vol.size))]
            else:
                ranges = [(s, e) for s, e, loc in extents if loc_segno(loc) in targets]
            for s, e in ranges:
                pieces = st.lookup_for_read(vid, s, e - s)
                try:
                    data = st.assemble(vid, s, e - s, pieces)
                finally:
                    st.done_reading()
                if st.relocate(vid, s, data, pieces):
                    moved += e - s
        return moved

    def _chunks_to_move(self, targets: set[int]) -> list[tuple[int, int]]:
        st = self.store
        out = []
        with st._lock:
            vids = list(st.state.maps)
        for vid in vids:
            with st._lock:
                vm = st.state.maps.get(vid)
                keys = sorted(vm.leaves) if vm else []
            for key in keys:
                with st._lock:  # one leaf at a time, so I/O is not held up for long
                    if vm is None or key not in vm.leaves:
                        continue
                    for i in range(LEAF_SLOTS):
                        chunk = (key << LEAF_BITS) | i
                        ext = vm.chunk_extents(chunk)
                        if len(ext) > MAX_FRAGMENTS or any(loc_segno(loc) in targets for _s, _e, loc in ext):
                            out.append((vid, chunk))
        return out

    def reclaim_now(self) -> None:
        """Free what can be freed at once (called when the pool runs out of space)."""
        with self._run_lock:
            self.store.checkpoint()  # deletes segments with no live data
            if self.collect():
                self.store.checkpoint()

    # -- the loop --------------------------------------------------------------------------
    def tick(self) -> None:
        """One maintenance pass; the loop calls it, and tests call it with a manual clock."""
        st = self.store
        with self._run_lock:
            if st.journal.failed:
                return
            if st.journal.dirty():
                st.journal.sync()
            now = self.clock.monotonic()
            appended = st.journal.appended_bytes - st.ckpt_appended
            if appended >= self.checkpoint_bytes or (appended and now - self._last_ckpt >= self.checkpoint_interval):
                st.checkpoint()
                self._last_ckpt = now
            if self.candidates():
                # Within a budget, so host I/O keeps priority. No checkpoint here: it serializes
                # every map under the store lock; the policy above (or reclaim_now, when space
                # runs out) writes the one that lets the emptied segments be deleted.
                self.collect(max_bytes=self.bytes_per_tick)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="vstor-maintenance", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self.clock.wait(self._stop, self.commit_interval):
            try:
                self.tick()
                self.last_error = ""
            except (VstorError, OSError) as e:
                self.last_error = str(e)
                log.error("maintenance: %s", e)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
