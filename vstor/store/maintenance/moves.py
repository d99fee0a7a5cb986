"""The Store's maintenance operations: GC moves and compaction, checkpoints and the deletion
of segments nothing needs, and shares of the maps for long computations.

A mixin of Store (store.py), split out to keep each module readable: these methods use the
Store's lock, state, journal and codec like the data path does. See reclaim.py for the loop
that drives them and docs/architecture.md ("Garbage collection, compaction and segment
deletion") for the rules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

from vstor.errors import CorruptData
from vstor.store.journal.format import REC_RELOCATE, loc_segno, record_bound
from vstor.store.maintenance.checkpoint import CheckpointData, write_checkpoint
from vstor.store.maps.chunkmap import VolumeMap
from vstor.store.maps.mapstore import dump_maps
from vstor.store.state import PoolState
from vstor.store.storeparts import StoreParts


class MaintenanceMixin(StoreParts):
    @contextlib.contextmanager
    def frozen_maps(self, pick: Callable[[PoolState], list[list[VolumeMap]]]) -> Iterator[list[list[VolumeMap]]]:
        """Shares of the maps ``pick`` chooses, taken under the lock in O(leaves), for long
        computations (space accounting, exact GC counts) that then run without the lock: writes
        copy their leaves away meanwhile, so the shares keep one consistent point in time."""
        with self._lock:
            groups = [[vm.share() for vm in g] for g in pick(self.state)]
        try:
            yield groups
        finally:
            with self._lock:
                for g in groups:
                    for vm in g:
                        vm.release()

    def gc_move(self, s: int, e: int, old: int) -> int:
        """GC: copy what is still referenced of [s, e) in the record at ``old`` to the journal head,
        and point every map that references it there (volume, snapshots, clones). Each
        REC_RELOCATE record carries ``old`` in its seq field, so replay repeats exactly this.
        Returns the bytes moved: 0 when the record's segment is gone (the work lists that call
        this outlive the store lock, and a checkpoint deletes a segment once nothing references
        it: host writes may have overwritten what was live there since the work was found)."""
        with self._lock:
            self._active_reads += 1
        try:
            data = memoryview(self._read_extent(None, s, e, old))
        except CorruptData:
            with self._lock:  # deletions take it: the listing cannot change meanwhile
                if loc_segno(old) not in self.journal.segments():
                    return 0
            raise  # the segment is there and its record damaged: reported
        finally:
            self.done_reading()
        rec_vol = self._header(old).header.volume
        moved = 0
        with self._remap_lock, self._lock:
            # Only the pieces some map still references: others were overwritten, or already
            # moved along with data a shared leaf held.
            # [s, e) lies inside one chunk (Reclaimer._work): its leaf versions are found once.
            chunk = s // self.sb.chunk_size
            assert (e - 1) // self.sb.chunk_size == chunk, (s, e)
            leaves = self.state.versions(rec_vol, chunk)
            for a, b in _union(self.state.referenced(rec_vol, s, e, old, leaves)):
                loc = self._relocation_record(rec_vol, a, data[a - s : b - s], old)
                self.state.relocate_all(rec_vol, a, b, old, loc, leaves)
                moved += b - a
        self.stats.add(relocated_bytes=moved)
        return moved

    def compact(self, vid: int, offset: int, data: bytes | memoryview, expect: list) -> bool:
        """Rewrite [offset, offset+len(data)) of volume ``vid``'s live map as one record if its
        extents still equal ``expect`` (merges a fragmented chunk)."""
        with self._lock:
            vm = self.state.maps.get(vid)
            end = offset + len(data)
            if vm is None or vm.lookup(offset, end) != expect:
                return False
            vm.map(offset, end, self._relocation_record(vid, offset, data, 0))
        self.stats.add(relocated_bytes=len(data), compacted_bytes=len(data))
        return True

    def _relocation_record(self, vid: int, offset: int, data: bytes | memoryview, old: int) -> int:
        segno, pos = self.journal.reserve(record_bound(len(data)))
        entries, bodies = self.codec.encode(data, (vid, REC_RELOCATE, old, offset, segno, pos), gated=False)
        return self._append(REC_RELOCATE, 0, vid, old, offset, len(data), entries, bodies, use_reserve=True)

    def checkpoint(self, both: bool = False) -> None:
        """Persist the state at the current journal tail, then delete segments nothing needs.
        ``both`` writes it to both copies (recovery does, once the journal has been replayed).

        The maps are captured as shares under the lock (O(leaves); a write meanwhile copies
        the leaf it changes) and serialized without it: serialized under the lock, the maps of
        a 1 GiB volume held every host request up for 130-170 ms per checkpoint (a scratch
        trace of the lock's holds, docs/benchmarks.md section 12, "Who holds the store's
        lock"). GC moves, which change shared leaves in place, wait on ``_remap_lock``
        meanwhile."""
        self.journal.faults.hit("checkpoint")
        with self._ckpt_lock, self._remap_lock:
            at: dict = {}

            def capture(state: PoolState) -> list[list[VolumeMap]]:  # under the lock, with the shares
                at.update(tail=self.journal.tail(), meta=state.meta_json(), live=dict(state.live),
                          appended=self.journal.appended_bytes)
                return [list(state.all_maps())]

            with self.frozen_maps(capture) as (frozen,):
                maps = dump_maps(frozen)
            (segno, pos), meta, live, appended = at["tail"], at["meta"], at["live"], at["appended"]
            self.journal.sync()
            gen = self.ckpt_generation + 1
            # Two copies, written alternately: the other one keeps the previous generation, or
            # gets this one too when it is not known to be valid (a new or damaged pool).
            write_checkpoint(self.backend, self.sb.uuid_bytes,
                             CheckpointData(gen, segno, pos, segno + 1, meta, maps), both=both or not self.ckpt_both)
            older = self.ckpt_position if self.ckpt_both and not both else (segno, pos)
            self.ckpt_generation, self.ckpt_position, self.ckpt_appended = gen, (segno, pos), appended
            self.ckpt_older, self.ckpt_both = older, True
            self.stats.add(checkpoints=1)
            self._delete_dead_segments(live, min(segno, older[0]))

    def _delete_dead_segments(self, live_at_checkpoint: dict[int, int], keep_segno: int) -> None:
        """Delete the segments before ``keep_segno`` (the older checkpoint copy's, so that copy
        can still be replayed) and every consumer's position that hold no live data."""
        keep_from = min([keep_segno, *(s for s, _p in self.consumers.positions().values())])
        dead = [s for s in self.journal.segments()
                if s < keep_from and not live_at_checkpoint.get(s) and s != self.journal.current_segno]
        if dead:
            with self._lock:
                self.wait_for_reads()
                for s in dead:
                    self.journal.delete_segment(s)  # unlisted durably; its file moved aside (metadata only)
                    self.state.seg_logical.pop(s, None)
                self._hcache.drop_segments(set(dead))
            self.stats.add(segments_deleted=len(dead))
        # Their blocks are freed without the lock, which every host request takes (42 ms per
        # 256 MiB file on ext4 mounted with discard); also what a crash left moved aside.
        self.backend.purge_deleted()


def _union(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
