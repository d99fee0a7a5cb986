"""Garbage collection and compaction, which the maintenance loop (maintloop.py) drives.

A segment's *live* bytes are those the chunk maps still reference. When a sealed
segment's live share falls below ``1 - min_dead``, GC rewrites each chunk that references
it as one REC_RELOCATE record at the journal head, which also merges fragmented chunks.
The emptied segment is deleted by the next checkpoint, once no checkpoint, consumer or
in-flight read can need it (see Store._delete_dead_segments).

  * GC: when the dead share of sealed segments exceeds ``min_dead``, moving at most
    ``bytes_per_tick`` per pass (32 MiB a second) in at most ``moves_per_tick`` records (each
    takes the store lock once), so host I/O keeps priority; when the pool
    runs out of space, ``reclaim_now`` works without that limit;
  * the fragment budget: every ``fragment_interval`` seconds, when the maps hold more chunk
    extents than ``fragment_budget``, the chunks that free the most are compacted, with the
    same per-pass limits (fragments.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from itertools import repeat
from operator import rshift
from typing import TYPE_CHECKING

from vstor.clock import Clock, SystemClock
from vstor.store.journal.format import LOC_SHIFT
from vstor.store.maintenance.activity import HostActivity
from vstor.store.maintenance.defrag import Defragmenter
from vstor.store.maintenance.maintloop import MaintenanceLoop
from vstor.store.maintenance.steps import FailureReport
from vstor.store.maps import fragments
from vstor.store.maps.accounting import segment_live
from vstor.store.maps.chunkmap import LEAF_BITS, Leaf

if TYPE_CHECKING:
    from vstor.hooks import HookRunner
    from vstor.store.catalog.policyrun import Spawn

log = logging.getLogger("vstor.reclaim")
# GC rewrites a volume's chunk whole once its pieces average under this many bytes. Such a
# rewrite costs less than one piece per extent it frees; at 4 KiB pieces it would cost more
# than the host's writes that made them (measured: 64 extents as the limit of a 512 KiB chunk
# made the 4 KiB mixed load's journal 1.69 bytes per byte written, the limit of 128 1.39;
# docs/benchmarks.md section 12).
COMPACT_PIECE = 4096
# Above the budget only when the host is idle; above this many times the budget also under
# host I/O, so that a long burst of small writes cannot grow the maps without bound.
HARD_FACTOR = 2


def max_fragments(chunk_size: int) -> int:
    """Extents above which GC compacts a volume's chunk: its pieces then average under
    COMPACT_PIECE bytes. 4 KiB random writes alone never exceed it (512 KiB chunk: 128)."""
    return max(1, chunk_size // COMPACT_PIECE)


class Reclaimer(MaintenanceLoop):
    """GC, compaction and the fragment budget of one store, and (from MaintenanceLoop) the
    background loop that runs them with the commits and checkpoints."""

    def __init__(self, store: object, clock: Clock | None = None, commit_interval: float = 1.0,
                 checkpoint_interval: float = 60.0, checkpoint_bytes: int = 512 << 20,
                 min_dead: float = 0.5, bytes_per_tick: int = 32 << 20, moves_per_tick: int = 2048,
                 seconds_per_tick: float | None = 0.15,
                 fragment_budget: int = fragments.BUDGET_BYTES // fragments.EXTENT_BYTES,
                 fragment_interval: float = 10.0, fragment_hard: int | None = None,
                 hooks: HookRunner | None = None,
                 spawn: Spawn | None = None, defrag: Defragmenter | None = None,
                 snapshots_in_use: Callable[[], dict[int, int]] = dict) -> None:
        """``hooks``, ``spawn``: how snapshot policies run their pre/post commands (policyrun.py).
        ``defrag``: the defragmenter its ticks run (defrag.py; by default one with its defaults).
        ``snapshots_in_use``: open handles per snapshot id (the FUSE export's), which policy
        pruning skips."""
        from vstor.store.catalog.policyrun import PolicyRunner
        from vstor.store.store import Store

        assert isinstance(store, Store)
        self.store = store
        self.clock = clock or SystemClock()
        self.commit_interval = commit_interval
        self.checkpoint_interval = checkpoint_interval
        self.checkpoint_bytes = checkpoint_bytes
        self.min_dead = min_dead
        self.bytes_per_tick = bytes_per_tick  # background GC/compaction budget, so host I/O keeps priority
        self.moves_per_tick = moves_per_tick
        # CPU time GC may take per tick: with many snapshots a move repoints every leaf version, and
        # the maintenance thread would otherwise take the GIL from host I/O. None: no limit.
        self.seconds_per_tick = seconds_per_tick
        self.fragment_budget = fragment_budget  # chunk extents all maps may hold (fragments.py)
        self.fragment_interval = fragment_interval
        # Over this many, the budget's compaction goes on under host I/O too.
        self.fragment_hard = fragment_budget * HARD_FACTOR if fragment_hard is None else fragment_hard
        self.fragment_extents = 0  # what the last count found
        self._fragments_at = float("-inf")
        self.budget_activity = HostActivity.of(store)  # host I/O between two fragment-budget steps
        self._fragment_urgent = False  # the work was found over HARD_FACTOR x the budget
        self._fragment_work: list[tuple[int, int]] = []  # (vid, chunk) still to compact, most extents last
        self._pending: list[tuple[str, int, int, int]] = []  # work found but not done yet ...
        self._pending_for: frozenset[int] = frozenset()  # ... for these targets
        self._stop = threading.Event()
        self._run_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_ckpt = self.clock.monotonic()
        self.report = FailureReport(log, "maintenance", commit_interval)
        self.exact_interval = 60.0
        self._exact: tuple[float, int, dict[int, int]] | None = None  # (when, sealed below, live per segment)
        self.snapshots_in_use = snapshots_in_use
        self.policies = PolicyRunner(store, hooks, spawn)
        self.defrag = defrag or Defragmenter(store)
        self.gc_activity = HostActivity.of(store)
        self.gc_state = "idle: no segment to clean"
        store.reclaimer = self

    # -- GC --------------------------------------------------------------------------------
    def candidates(self) -> set[int]:
        return {s for s, share in self.live_shares().items() if 0 < share <= 1 - self.min_dead}

    def live_shares(self) -> dict[int, float]:
        """Each sealed segment's live bytes over the logical bytes written to it (both logical,
        so compression does not skew it), for the segments that hold data records."""
        st = self.store
        exact = self._exact_live()
        with st.locked():
            cur = st.journal.current_segno
            out = {}
            for s in st.journal.segments():
                size = st.state.seg_logical.get(s, 0)
                if s >= cur or size <= 0:
                    continue
                live = st.state.live.get(s, 0)
                if exact is not None and s < exact[1]:
                    live = min(live, exact[2].get(s, 0))
                out[s] = live / size
            return out

    def _exact_live(self) -> tuple[float, int, dict[int, int]] | None:
        """With snapshots, state.live counts data shared by several leaf versions once per
        version, so segments look fuller than they are. Every ``exact_interval`` seconds this
        counts each piece once, on shares of the maps (Store.frozen_maps), without the lock.
        Only segments sealed before the count began use it: their live data can only shrink
        afterwards, so it stays an upper bound."""
        st = self.store
        with st.locked():
            if not st.state.snap_maps:
                self._exact = None
                return None
        now = self.clock.monotonic()
        if self._exact is not None and now - self._exact[0] < self.exact_interval:
            return self._exact
        with st.locked():
            sealed = st.journal.current_segno
        with st.frozen_maps(lambda state: [list(state.all_maps())]) as (maps,):  # counted without the lock
            by_key: dict[int, dict[int, Leaf]] = {}
            for vm in maps:
                for key, leaf in vm.leaves.items():
                    by_key.setdefault(key, {})[id(leaf)] = leaf
            live = segment_live({k: list(v.values()) for k, v in by_key.items()}, st.sb.chunk_size)
        self._exact = (now, sealed, live)
        return self._exact

    def collect(self, targets: set[int] | None = None, max_bytes: int | None = None,
                max_moves: int | None = None, max_seconds: float | None = None) -> int:
        """Relocate the live data of ``targets`` (default: the candidates) and compact chunks
        that are too fragmented. Returns the bytes rewritten, stopping once ``max_bytes`` is
        reached (the maintenance loop's per-tick budget; the rest waits for later ticks).

        GC moves only the extents that live in a target segment, each as its own record, and
        repoints every map that holds it (a volume, its snapshots, clones), so shared data is
        moved once. A volume's chunk with more than max_fragments() extents is instead
        rewritten whole, once, which merges its fragments."""
        st = self.store
        moved = 0
        # A scan finds all the work; a budgeted pass does part of it, and the rest waits for the
        # next tick instead of a new scan (each item is checked again when it is done). Segments
        # that become candidates meanwhile wait until that work is done, so that under a steady
        # stream of writes the segments already begun are emptied, and freed, first. A pass
        # that finishes the list scans again, once.
        if targets is not None and frozenset(targets) != self._pending_for:
            self._pending = []
        scanned = False
        deadline = None if max_seconds is None else time.perf_counter() + max_seconds
        while True:
            if not self._pending:
                if scanned:
                    break
                scanned = True
                found = self.candidates() if targets is None else targets
                self._pending, self._pending_for = self._work(found), frozenset(found)
                continue
            if (max_bytes is not None and moved >= max_bytes) or (max_moves is not None and max_moves <= 0) or (
                    deadline is not None and time.perf_counter() > deadline):
                break
            kind, a, b, c = self._pending.pop()
            if max_moves is not None:
                max_moves -= 1
            if kind == "move":
                moved += st.gc_move(a, b, c)
                continue
            moved += self._compact(a, b, c)
        return moved

    def _compact(self, vid: int, s: int, e: int) -> int:
        """Rewrite [s, e) of volume ``vid``'s live map as one record, cut at the volume's end;
        returns the bytes written (0 if the volume is gone, shrank below ``s``, or a host write
        changed the range meanwhile). The work lists that call this outlive the store lock."""
        st = self.store
        with st.locked():
            vm = st.state.maps.get(vid)
            vol = st.state.table.by_id_or_none(vid)
            e = min(e, vol.size) if vol is not None else s
        if vm is None or e <= s:
            return 0
        pieces = st.lookup_for_read(vm, s, e - s)
        try:
            data = st.assemble(vm.lineage, s, e - s, pieces)
        finally:
            st.done_reading()
        return e - s if st.compact(vid, s, data, pieces) else 0

    def count_fragments(self) -> fragments.Census:
        """The chunk extents the maps hold now, and the chunks compaction would free."""
        st = self.store
        with st.locked():
            maps = st.state.owned_maps()
        return fragments.census(maps, st.locked())

    def keep_fragment_budget(self) -> int:
        """Every ``fragment_interval`` seconds, count the chunk extents the maps hold; while they
        exceed ``fragment_budget``, compact the chunks that free the most, within the pass's
        byte and time limits (the rest waits for the next tick). Returns the bytes rewritten.

        Over the budget, compaction runs only in a tick with no host read or write since the
        last one, so that host I/O keeps priority: a compaction rewrites a whole chunk to free
        its extents, and run during a burst of random writes it cost IOPS through FUSE
        (docs/benchmarks.md section 2), during random reads the readers' CPU (section 9).
        Memory is brought back under the budget once the burst ends. Over ``fragment_hard``
        (HARD_FACTOR times the budget), the work found then goes on under host I/O too, so a
        burst long enough to fragment more than that cannot grow the maps without bound."""
        st = self.store
        busy = self.budget_activity.look().busy
        now = self.clock.monotonic()
        if not self._fragment_work and now - self._fragments_at >= self.fragment_interval:
            self._fragments_at = now
            found = self.count_fragments()
            self.fragment_extents = found.extents
            self._fragment_urgent = found.extents > self.fragment_hard
            self._fragment_work = fragments.pick(found, self.fragment_budget)[::-1]
            if self._fragment_work:
                log.info("chunk maps hold %d extents, over the budget of %d: compacting %d chunks%s",
                         found.extents, self.fragment_budget, len(self._fragment_work),
                         f" (under host I/O too: over {self.fragment_hard})"
                         if self._fragment_urgent else " (while the host is idle)")
        if busy and not self._fragment_urgent:
            return 0
        cs = st.sb.chunk_size
        moved = 0
        deadline = None if self.seconds_per_tick is None else time.perf_counter() + self.seconds_per_tick
        while self._fragment_work and moved < self.bytes_per_tick and (
                deadline is None or time.perf_counter() < deadline):
            vid, chunk = self._fragment_work.pop()
            with st.locked():  # a snapshot taken since the count shares the leaf: compacting frees nothing
                vm = st.state.maps.get(vid)
                leaf = None if vm is None else vm.leaves.get(chunk >> LEAF_BITS)
                if leaf is None or leaf.refs > 1:
                    continue
            moved += self._compact(vid, chunk * cs, (chunk + 1) * cs)
        return moved

    def _work(self, targets: set[int]) -> list[tuple[str, int, int, int]]:
        """("move", start, end, loc) for each distinct extent in a target segment, and
        ("compact", vid, start, end) for each over-fragmented chunk of a volume. Moves come
        segment by segment, the least live first (greedy: the most space freed per byte
        moved), and in address order within a segment, so a pass cut short by its budget has
        emptied whole segments rather than thinned them all.

        Each distinct leaf is scanned once, under the lock but briefly: whole-chunk slots are
        mapped to segment numbers with C-level calls and skipped at once when none is a target,
        and each overlay list is examined once per pass however many leaf versions share it."""
        st = self.store
        cs = st.sb.chunk_size
        most = max_fragments(cs)
        moves: dict[tuple[int, int, int], None] = {}
        compact: dict[tuple[int, int], None] = {}
        seen: set[int] = set()
        lists_done: set[int] = set()
        with st.locked():
            maps = st.state.owned_maps()
        for vid, vm in maps:
            with st.locked():
                keys = sorted(vm.leaves)
            for key in keys:
                with st.locked():  # one leaf at a time, so I/O is not held up for long
                    leaf = vm.leaves.get(key)
                    if leaf is None or id(leaf) in seen:
                        continue
                    seen.add(id(leaf))
                    segs = list(map(rshift, leaf.slots, repeat(LOC_SHIFT)))
                    if not targets.isdisjoint(segs):
                        base = key << LEAF_BITS
                        for i, seg in enumerate(segs):
                            if seg in targets:
                                chunk = base | i
                                moves[(chunk * cs, (chunk + 1) * cs, leaf.slots[i])] = None
                    for chunk, ext in leaf.overlays.items():
                        if vid and len(ext) > most:
                            vol = st.state.table.by_id_or_none(vid)
                            if vol is not None:
                                compact[(vid, chunk)] = None
                            continue
                        if id(ext) in lists_done:
                            continue
                        lists_done.add(id(ext))
                        for s, e, loc in ext:
                            if loc >> LOC_SHIFT in targets:
                                moves[(s, e, loc)] = None
        share = self.live_shares()
        order = sorted(moves, key=lambda m: (share.get(m[2] >> LOC_SHIFT, 0.0), m[2] >> LOC_SHIFT, m[0]))
        out = [("move", s, e, loc) for s, e, loc in reversed(order)]  # collect() pops from the end
        with st.locked():
            for vid, chunk in compact:
                vol = st.state.table.by_id_or_none(vid)
                if vol is not None:
                    out.insert(0, ("compact", vid, chunk * cs, min((chunk + 1) * cs, vol.size)))
        return out

    def reclaim_now(self) -> None:
        """Free what can be freed at once (called when the pool runs out of space)."""
        with self._run_lock:
            # A segment with no live data is deleted once both checkpoint copies lie past it
            # (maintenance.py), so each step takes two checkpoints.
            self.store.checkpoint()
            self.store.checkpoint()
            if self.collect():
                self.store.checkpoint()
                self.store.checkpoint()
