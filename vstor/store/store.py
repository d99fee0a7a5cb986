"""The Store: an open pool. Volumes, the data path, checkpoints and journal readers.

Locking: one re-entrant lock guards the pool state and the journal tail. Writers encode
their frames outside it when the pool is not encrypted (with encryption the associated
data needs the record's sequence number and position, known only under the lock). Reads
(readpath.py) look up their extents under the lock and do their I/O outside it, counted in
``_active_reads`` so that segment deletion waits for them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from vstor.clock import Clock, SystemClock
from vstor.errors import NotFound, PoolFull, ReadOnly, UsageError
from vstor.faults import NO_FAULTS, Faults
from vstor.store.adminops import AdminOpsMixin
from vstor.store.backend.base import PoolBackend
from vstor.store.backend.statefiles import PoolFiles
from vstor.store.backend.stub import backend_for
from vstor.store.catalog.volumes import Volume
from vstor.store.codec import FrameCodec, derive_key, pair_key_check
from vstor.store.journal.consumers import Consumers
from vstor.store.journal.format import (
    FRAME_SIZE,
    MAX_RECORD,
    REC_RELOCATE,
    REC_TRIM,
    REC_VOLUME,
    REC_WRITE,
    RECORD_HEADER_SIZE,
    FrameEntry,
    RecordHeader,
    block_sums,
    frame_bodies,
    loc_pos,
    loc_segno,
    pack_frame_table,
    pack_record_header,
    record_bound,
)
from vstor.store.journal.hcache import CachedRecord, HeaderCache
from vstor.store.journal.segscan import ScannedRecord
from vstor.store.journal.writer import Journal
from vstor.store.maintenance.moves import MaintenanceMixin
from vstor.store.maintenance.space import SpaceGuard
from vstor.store.reads.path import ReadPathMixin
from vstor.store.reads.resolved import ResolvedBudget
from vstor.store.reads.sweep import ScanDetector
from vstor.store.recovery import Recovered, recover
from vstor.store.resumeops import ResumeOpsMixin
from vstor.store.state import PoolState
from vstor.store.stats import Counters
from vstor.store.superblock import (
    Superblock,
    ensure_superblock_copy,
    layout,
    load_key,
    load_superblock_from,
)
from vstor.units import format_size

log = logging.getLogger("vstor.store")


class Store(AdminOpsMixin, MaintenanceMixin, ReadPathMixin, ResumeOpsMixin):
    def __init__(self, pool: str, sb: Superblock, key: bytes | None, clock: Clock | None = None,
                 faults: Faults = NO_FAULTS, backend: PoolBackend | None = None) -> None:
        self.pool = pool
        self.sb = sb
        self.faults = faults
        self.paths = layout(pool)
        self.backend = backend or backend_for(pool, faults)  # segments, checkpoints (vstor/store/backend/)
        self.files = PoolFiles(self.backend)  # the pool's state files, through the same backend
        self.clock = clock or SystemClock()
        self.codec = FrameCodec(sb.uuid_bytes, sb.compress == "lz4", key)
        self.key_check = pair_key_check(key)  # compared by replication peers; "" without a key
        self.media_key = derive_key(key, sb.uuid_bytes, b"media key v1") if key else None  # tapes, discs
        self.backup_key = derive_key(key, sb.uuid_bytes, b"backup key v1") if key else None  # backup jobs' keys' root
        self.plain = FrameCodec(sb.uuid_bytes, False, None)
        self.journal = Journal(self.paths["journal"], sb.uuid_bytes, sb.segment_size, faults,
                               lambda: int(self.clock.time() * 1e9), self.backend)
        self.state = PoolState(sb.chunk_size)
        self.space = SpaceGuard(pool, reserve=2 * sb.segment_size + (8 << 20), held=self.journal.allocated_ahead)
        self.stats = Counters()
        self._lock = threading.RLock()
        self._reads_done = threading.Condition(self._lock)
        self._active_reads = 0
        self._read_waiters = 0  # threads in wait_for_reads
        self._hcache = HeaderCache()
        self._spare: list[bytearray] = []  # scratch buffers of reads of shared spans (reads/path.py)
        self._scan_turn = threading.Lock()  # the reads of covered scans take turns (reads/path.py)
        self._resolved = ResolvedBudget()  # resolved 4 KiB blocks of all maps (reads/resolved.py)
        self._scans = ScanDetector()  # readers that scan aged images (reads/sweep.py)
        self._sweeping: threading.Thread | None = None  # the sweep in progress (reads/sweeper.py)
        self._sweeps_stop = threading.Event()
        self._ckpt_lock = threading.Lock()
        self._remap_lock = threading.Lock()  # GC moves (in-place changes of shared leaves) vs checkpoints
        self.ckpt_generation = 0
        self.ckpt_position = (0, 0)
        self.ckpt_older = (0, 0)  # the other checkpoint copy's position: the journal is kept from here
        self.ckpt_both = False  # both copies valid, so the next checkpoint need write only one
        self.ckpt_appended = 0
        self.recovery: dict = {}
        self.reclaimer: object | None = None  # set by reclaim.Reclaimer; used when space runs low
        self.consumers = Consumers(self.files.sub("meta"))
        self.fenced: dict[int, str] = {}  # group id -> why host writes are refused (replication secondary)

    @classmethod
    def open(cls, pool: str, key_file: str | None = None, clock: Clock | None = None,
             faults: Faults = NO_FAULTS, salvage: bool = False, backend: PoolBackend | None = None) -> Store:
        """Open a pool and recover it. The caller must hold the pool lock. ``salvage`` (pool check
        --repair only) cuts damaged durable data at the newest segment's end instead of refusing.
        ``backend``: where its segments, superblock and checkpoints are (default: files in ``pool``)."""
        backend = backend or backend_for(pool, faults)
        try:
            sb = load_superblock_from(backend)
            ensure_superblock_copy(backend, sb)
            store = cls(pool, sb, load_key(sb, key_file), clock, faults, backend)
        except BaseException:
            backend.close()
            raise
        store.journal.salvage = salvage
        try:
            store.adopt_recovery(recover(store.journal, store.backend, sb))
        except BaseException:  # refused or failed: no checkpoint, and every descriptor closed
            store.close(checkpoint=False)
            raise
        return store

    def adopt_recovery(self, r: Recovered) -> None:
        """Open with what recovery found; the replayed state goes to both checkpoint copies."""
        loaded = r.loaded
        self.state = loaded.state
        self.adopt_checkpoint(loaded.generation, loaded.start, loaded.older, loaded.both_copies)
        self.recovery = r.report
        if r.needs_checkpoint:
            self.checkpoint(both=True)  # the older copy is then not needed

    def locked(self) -> threading.RLock:
        """The state lock, as a context manager (``with store.locked():``), for code outside the
        Store that reads or changes the volume table, the catalog or the maps in several steps
        that no write, GC move or checkpoint may come between. Reentrant; hold it briefly."""
        return self._lock

    def adopt_checkpoint(self, generation: int, position: tuple[int, int], older: tuple[int, int],
                         both: bool) -> None:
        """Take recovery's view of the checkpoint copies on disk (recovery.py)."""
        self.ckpt_generation, self.ckpt_position = generation, position
        self.ckpt_older, self.ckpt_both = older, both

    # -- volumes, groups and snapshots (catalog events) ---------------------------------------
    def volumes(self) -> list[Volume]:
        with self._lock:
            return self.state.table.list()

    def volume(self, name: str) -> Volume:
        with self._lock:
            return self.state.table.get(name)

    def create_volume(self, name: str, size: int) -> Volume:
        ev = self.event(lambda st: st.make_volume_create(name, size, self.clock.time()))
        return self.state.table.by_id[ev["id"]]

    def event(self, make: Callable[[PoolState], dict]) -> dict:
        """Validate, journal and apply one catalog event (``make`` builds it from the state, under
        the store lock), then make it durable. One record, so a crash leaves it whole or absent.
        Writes wait only while the record is appended and applied: a snapshot's cut is exact."""
        with self._lock:
            t0 = time.perf_counter_ns()
            ev = make(self.state)
            self._log_event(ev)
            held = time.perf_counter_ns() - t0
        if ev["op"] == "snap_create":
            self.stats.snapshot_taken(held // 1000)
        self.journal.sync()
        return ev

    def _log_event(self, ev: dict) -> None:
        """Journal and apply one catalog event (caller holds the lock); durable at the next sync."""
        payload = json.dumps(ev, sort_keys=True).encode()
        entries, bodies = self.plain.encode(payload)
        self._append(REC_VOLUME, 0, ev.get("id", 0), 0, 0, len(payload), entries, bodies, use_reserve=True)
        self.state.apply_event(ev)

    def volume_size(self, vid: int) -> int:
        """A volume's size by id, without the lock (the write path checks it again under it)."""
        vol = self.state.table.by_id_or_none(vid)
        if vol is None:
            raise NotFound(f"volume id {vid} no longer exists")
        return vol.size

    def volume_usage(self, vid: int) -> int:
        with self._lock:
            return self.state.maps[vid].mapped_bytes

    # -- data path -----------------------------------------------------------------------
    def write(self, vid: int, offset: int, data: bytes | memoryview) -> None:
        """Record ``data`` at ``offset``. On return the write is in the journal (visible to reads);
        it is durable after the next :meth:`sync`."""
        view = memoryview(data)
        n = len(view)
        if n > MAX_RECORD:  # a one-record write is checked by _write_record before it lands
            with self._lock:  # refuse the whole write up front: no piece of it may land
                self._check_fence(vid)
                _check_range(self._volume(vid), offset, n)
        try:
            for start in range(0, n, MAX_RECORD):
                self._write_record(vid, offset + start, view[start : start + MAX_RECORD])
        except PoolFull:
            self.stats.add(enospc=1)
            raise
        self.stats.request("write", n)

    def _check_fence(self, vid: int) -> None:
        why = self.fenced.get(self._volume(vid).group)
        if why:
            raise ReadOnly(why)

    def replicated(self, vid: int, offset: int, length: int, data: bytes | None, seq: int) -> None:
        """Apply one record shipped by a replication peer under the peer's group sequence number
        ``seq`` (a trim when ``data`` is None). Fenced groups accept these; hosts they refuse.
        Afterwards the group's sequence number is ``seq``, also after replay. ``seq`` 0 is copy
        data (initial copy or resync), which leaves the sequence number alone."""
        if data is None:
            self._trim(vid, offset, length, seq)
        else:
            self._write_record(vid, offset, memoryview(data), seq)

    def _write_record(self, vid: int, offset: int, piece: memoryview, forced_seq: int = -1) -> None:
        n = len(piece)
        pre = None if self.codec.encrypted else self.codec.encode(piece)
        if pre is not None and not pre[1]:  # every frame is zeros: nothing stored
            self._zero_write(vid, offset, n, forced_seq)
            return
        sums = block_sums(*pre, n) if pre is not None else b""  # hashed outside the lock, like the frames
        bound = record_bound(n)
        self._ensure_room(bound)
        with self._lock:
            vol = self._volume(vid)
            if forced_seq < 0:
                self._check_fence(vid)  # also between the pieces of one large write
            _check_range(vol, offset, n)
            segno, pos = self.journal.reserve(bound)
            state = self.state
            seq = forced_seq if forced_seq >= 0 else state.group_seq[vol.group] + 1
            entries, bodies = pre or self.codec.encode(piece, (vid, REC_WRITE, seq, offset, segno, pos))
            if not bodies:
                self._zero_write(vid, offset, n, forced_seq)
                return
            loc = self._append(REC_WRITE, vol.group, vid, seq, offset, n, entries, bodies, reserved=True, sums=sums)
            if seq:
                state.group_seq[vol.group] = seq
            state.maps[vid].map(offset, offset + n, loc)

    def _zero_write(self, vid: int, offset: int, n: int, forced_seq: int) -> None:
        """An all-zero write: a trim, which stores nothing."""
        with self._lock:
            _check_range(self._volume(vid), offset, n)
        self.stats.add(zero_writes=1)
        self._trim(vid, offset, n, forced_seq)

    def trim(self, vid: int, offset: int, length: int) -> None:
        """Make a range read as zeros and release its space (discard, punch hole, zero write)."""
        self._trim(vid, offset, length, -1)

    def _append(self, rtype: int, group: int, vid: int, seq: int, offset: int, length: int,
                entries: list[FrameEntry], bodies: list, use_reserve: bool = False,
                reserved: bool = False, sums: bytes | None = None) -> int:
        """Journal one record (caller holds the lock). ``reserved``: the caller called
        journal.reserve with a bound on this record's size. ``sums``: the record's block sums
        (format.block_sums), if the caller computed them; otherwise they are computed here."""
        if sums is None:
            sums = block_sums(entries, bodies, length) if rtype in (REC_WRITE, REC_RELOCATE) else b""
        table = pack_frame_table(entries) + sums
        stored = len(table) + sum(e.stored_len for e in entries)
        header = RecordHeader(rtype, len(entries), group, vid, seq, offset, length, stored,
                              int(self.clock.time() * 1e9), bool(sums))
        # Trims and catalog events (which delete and shrink) are how space is freed, and their
        # records are tiny: the journal alone decides whether they fit (in the blocks it has
        # allocated, or a few more), never the guard's estimate of the filesystem.
        frees = rtype in (REC_TRIM, REC_VOLUME)
        if use_reserve and not frees and not self.space.has_room(RECORD_HEADER_SIZE + stored, use_reserve=True):
            raise PoolFull("pool is completely full: not even its reserve has room; grow the filesystem "
                           "under the pool")
        if not reserved:
            self.journal.reserve(RECORD_HEADER_SIZE + stored)
        # reserve() rolled over if it had to; the record lands in the segment current now, and
        # its header checksum is seeded with that segment's number (format.py)
        packed = pack_record_header(header, table, self.journal.current_segno) + table  # written and cached as is
        loc = self.journal.write([packed, *bodies])
        self.space.consumed(RECORD_HEADER_SIZE + stored)
        if rtype in (REC_WRITE, REC_RELOCATE):
            self.state.seg_logical[loc_segno(loc)] += length
        if rtype in (REC_WRITE, REC_TRIM):  # what replay counts too (PoolState.apply_record)
            self.state.written[vid] += length
        self._hcache.put_raw(loc, packed)
        return loc

    def _ensure_room(self, nbytes: int) -> None:
        if self.space.has_room(nbytes):
            return
        if self.backend.release_spares():  # dead segment files kept for reuse go first
            self.space.refresh()
            if self.space.has_room(nbytes):
                return
        if self.reclaimer is not None:
            self.reclaimer.reclaim_now()  # type: ignore[attr-defined]
            self.space.refresh()
            if self.space.has_room(nbytes):
                return
        raise PoolFull("pool is full: no space for new data (acknowledged data is safe); free space with "
                       "fstrim or by deleting volumes, or grow the filesystem under the pool")

    def decode_payload(self, rec: ScannedRecord) -> bytes:
        """Verify and decode the whole payload of a scanned record (journal readers)."""
        h, segno, pos = rec.header, loc_segno(rec.loc), loc_pos(rec.loc)
        ad = (h.volume, h.rtype, h.seq, h.offset, segno, pos) if self.codec.encrypted else None
        parts = []
        for i, (fe, body) in enumerate(zip(rec.frames, frame_bodies(rec.frames, rec.payload), strict=True)):
            flen = min(FRAME_SIZE, h.length - i * FRAME_SIZE)
            parts.append(self.codec.decode(fe, body, flen, ad, i, f"segment {segno} record {pos} frame {i}"))
        return b"".join(parts)

    def _header(self, loc: int, nowait: bool = False) -> CachedRecord:
        hit = self._hcache.get(loc)
        if hit is None:
            _header, packed = self.journal.read_header_packed(loc_segno(loc), loc_pos(loc), nowait)
            hit = self._hcache.put_read(loc, packed)
        return hit

    def sync(self) -> None:
        """Make every write that returned before this call durable (group commit)."""
        self.journal.sync()
        self.stats.add(fsyncs=1)

    def mark_durable(self) -> bool:
        """When the newest records are durable but unmarked and the journal is idle, write and
        sync a commit marker after them (the maintenance tick), so that damage to them is
        never taken for a torn tail after a crash. Returns whether a marker was written."""
        with self._lock:
            if not self.journal.unmarked():
                return False
            self.journal.mark()
        return True

    def _volume(self, vid: int) -> Volume:
        vol = self.state.table.by_id_or_none(vid)
        if vol is None:
            raise UsageError(f"volume id {vid} no longer exists")
        return vol

    # -- checkpoints and segment retention -----------------------------------------------
    def usage(self) -> dict:
        spares, spare_bytes = self.backend.spare_segments()  # a directory listing: not under the lock
        with self._lock:
            segs = self.journal.segments()
            used = sum(self.journal.segment_bytes(s) for s in segs)
            return {"segments": len(segs), "journal_bytes": used, "spare_segments": spares,
                    "spare_bytes": spare_bytes, "mapped_bytes": self.state.mapped_bytes(),
                    "free_bytes": self.space.free_bytes(), "durable": list(self.journal.durable_position()),
                    "tail": list(self.journal.tail()), "checkpoint": list(self.ckpt_position),
                    "prepared_bytes": self.journal.prepared_bytes,
                    "sync_mean_bytes": round(self.journal.density.mean),
                    "group_seq": dict(self.state.group_seq)}

    def close(self, checkpoint: bool = True) -> None:
        """Write a final checkpoint (unless told not to, or the journal failed), then seal,
        sync and close the journal. The journal is closed even if the checkpoint fails: every
        record is still in it, and the next start replays them from the last checkpoint."""
        self.stop_sweeps()
        try:
            if checkpoint and not self.journal.failed and self.journal.outage is None:
                self.checkpoint()
        finally:
            try:
                self.journal.close()
            finally:
                self.backend.close()


def _check_range(vol: Volume, offset: int, n: int) -> None:
    if offset < 0 or offset + n > vol.size:
        raise UsageError(f"write past the end of volume {vol.name!r}: {format_size(n)} at offset {format_size(offset)} "
                         f"> its size {format_size(vol.size)}")
