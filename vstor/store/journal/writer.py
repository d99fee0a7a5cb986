"""The write journal: numbered append-only segment files with group commit.

The journal holds the data itself: volume maps point at records inside segments, so
every payload byte is written once. Guarantees (the block-device contract rests on them):

* ``write`` returns once the record is in the segment file's page cache: later reads and
  scans see it, and it survives the death of the process (kill -9); only a crash of the
  machine before the next sync can lose it. A small record (up to SMALL_RECORD) is copied
  into a shared memory map of the segment (a window of WINDOW_BYTES, allocated with
  fallocate before it is mapped), so a 4 KiB write costs a memory copy, not a system call
  that gives up the GIL. A larger record is written with one pwritev, and so is any record
  that lands in space already written: a reused segment file (backend/spares.py), or zeros
  a thread of the journal wrote ahead of the tail while syncs came often (prewrite.py), so
  that an fdatasync need not commit the filesystem's extent conversion (tailspace.py).
* ``sync`` returns once every record appended before the call is on stable storage.
  Concurrent callers share one fdatasync (group commit); a caller whose records were
  made durable by another's fdatasync returns without a system call.
* A segment is fdatasync'ed before the first record is appended to its successor, so a
  crash can tear only the newest segment's tail. Writeback of each WRITEBACK_BYTES appended
  is started at once (``start_writeback``), so that this fdatasync, which every writer waits
  for, finds little left to write: without it a 64 MiB segment's rollover waited for all of
  it (140 ms median, tools/bench_rollover.py). Recovery cuts a torn tail and never
  appends to that segment again; any bad record before the newest segment's tail is
  corruption and is reported, never skipped.
* A failed write or fdatasync puts the journal in a failed state (EIO on every later
  append and sync) instead of guessing what reached the disk (the fsyncgate lesson).
  On a remote backend, a timeout or a full cluster *suspends* it instead (journal/outage.py):
  appends and syncs fail at once until :meth:`Journal.resume` continues in a new segment
  whose header seals the old one at its last durable position.

Segments are created, listed, cut, deleted and (on a backend without local files) written
and flushed through the pool's backend (vstor/store/backend/). On a local pool the appends
keep the mapped window, pwritev and fdatasync described above on the segment file; on a
RADOS pool ``write`` queues the record as asynchronous writes (many in flight) and ``sync``
waits for them all, with the same guarantees: a record is readable once ``write`` returns,
durable once ``sync`` returns, and a failed write fails the journal.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable

from vstor.durable import start_writeback
from vstor.errors import PoolFull, VstorError
from vstor.faults import NO_FAULTS, Faults
from vstor.store.backend.base import PoolBackend
from vstor.store.backend.local import LocalBackend
from vstor.store.journal.format import (
    MAX_SEGMENT_SIZE,
    REC_COMMIT,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    RecordHeader,
    make_loc,
    pack_padding,
    pack_record_header,
    pack_segment_header,
    padding_after,
)
from vstor.store.journal.groupcommit import GroupCommit
from vstor.store.journal.outage import Outage
from vstor.store.journal.prewrite import PREWRITE_LOW, Prewriter, SyncDensity
from vstor.store.journal.resume import ResumeMixin
from vstor.store.journal.segfiles import SegmentCatalog
from vstor.store.journal.segread import SegmentReader, device_readahead
from vstor.store.journal.segscan import SegmentScanner
from vstor.store.journal.tailspace import REUSED_AHEAD, SMALL_RECORD, TailSpaceMixin

WRITEBACK_BYTES = 8 * 1024 * 1024  # appended bytes after which their writeback is started
ALIGN_FROM = 64 * 1024  # records this large end with padding to the backend's append_alignment

log = logging.getLogger("vstor.journal")


class Journal(SegmentCatalog, SegmentReader, SegmentScanner, ResumeMixin, TailSpaceMixin):
    def __init__(self, directory: str, pool_uuid: bytes, segment_size: int, faults: Faults = NO_FAULTS,
                 clock_ns: Callable[[], int] = time.time_ns, backend: PoolBackend | None = None) -> None:
        if not SEGMENT_HEADER_SIZE < segment_size <= MAX_SEGMENT_SIZE:
            raise ValueError("bad segment size")
        self.dir = directory
        self._own_backend = backend is None
        self.backend = backend or LocalBackend(os.path.dirname(directory), faults, journal_dir=directory)
        self._files = self.backend.local_path(0) is not None  # segments are local files: map and fdatasync them
        self.kernel_readahead = device_readahead(directory) if self._files else 0
        self._align = self.backend.append_alignment
        self.pool_uuid = pool_uuid
        self.segment_size = segment_size
        self.faults = faults
        self._clock_ns = clock_ns
        self._lock = threading.Lock()  # tail state; taken by appenders
        self._sync_lock = threading.Lock()  # one fdatasync at a time
        self.commits = GroupCommit()  # sync()'s callers: one leads the flush, the rest wait for it
        self._fd = -1
        self._segno = 0
        self._tail = 0  # where the next record goes
        self._win: mmap.mmap | None = None  # shared map of [_win_start, _win_end) of the segment
        self._win_start = self._win_end = 0
        self._reused = False  # the current segment's file held an earlier segment: its old contents are read ahead
        self._ahead = 0  # ... up to here
        # The current segment's blocks are written up to here (a reused file's old contents, or
        # zeros prepared ahead: prewrite.py): records below it go by pwrite, never through the map.
        self._prepared = 0
        self._file_end = 0  # the live segment file's size (tailspace.py: allocated_ahead)
        self._prepare_off = False  # preparing failed in this segment (a full filesystem): not again
        self.density = SyncDensity()  # bytes appended per fdatasync: dense syncs start the preparing
        self.prepared_bytes = 0  # zeros written ahead of the tail since the journal opened
        self._prewriter = Prewriter(self._prepare_step, f"vstor-prewrite {directory}") if self._files else None
        self._durable = (0, 0)
        self._marked = 0  # position in the current segment covered by the last commit marker
        self._marker_end = 0  # the tail right after a marker mark() wrote
        self._pending: int | None = None  # a marker decided by reserve(), written by write()
        self._reserved: tuple[int, int] | None = None  # where the record being built will land
        self._written_back = 0  # writeback started up to here in the current segment
        self._read_fds: dict[int, int] = {}
        self.failed: str | None = None
        self.salvage = False  # pool check --repair: cut damaged durable data in the newest segment
        self.salvaged: dict | None = None  # what salvage cut
        self.headers_rewritten: list[int] = []  # segments whose damaged header salvage rewrote
        self.appended_bytes = 0
        self.syncs = 0
        self.outage: Outage | None = None  # remote backend failing for now: suspended, not failed
        self.read_failures = 0
        self._resume_header: bytes | None = None  # the sealing header a resume tried to create
        self._resume_tail: int | None = None  # the tail when a resume first cut it to the durable position
        self._seals: dict[int, int | None] = {}  # segno -> where its successor's header says it ends
        self._cache_lock = threading.Lock()
        self._listed: set[int] | None = None  # remote backend: the segment listing, kept by this journal
        self._sizes: dict[int, int] = {}  # remote backend: sizes of segments no longer appended to

    # -- appending -----------------------------------------------------------------------
    @property
    def current_segno(self) -> int:
        return self._segno

    def tail(self) -> tuple[int, int]:
        return self._segno, self._tail

    def start_segment(self, segno: int, seals_prev: int | None = None) -> None:
        """Open a fresh segment for appending (at startup and at rollover): created exclusively
        with its header, durably, by the backend. ``seals_prev``: the segment before it ends
        there (SEG_SEALS_PREV; recovery on a remote backend, resume.py)."""
        self.backend.create_segment(segno, pack_segment_header(self.pool_uuid, segno, self._now_ns(), seals_prev))
        if seals_prev is not None:
            self._seals[segno - 1] = seals_prev
        self._begin(segno)

    def _begin(self, segno: int) -> None:
        """Append from now on to segment ``segno``, just created with its header."""
        with self._cache_lock:
            if self._listed is not None:
                self._listed.add(segno)
        fd = os.open(self.path(segno), os.O_RDWR) if self._files else -2  # -2: open, but no local file
        # A new file holds its header alone; a spare keeps the size of the segment it was.
        written = os.fstat(fd).st_size if fd >= 0 else SEGMENT_HEADER_SIZE
        size = self._allocate_segment(fd, segno, written) if fd >= 0 and written <= SEGMENT_HEADER_SIZE else written
        with self._sync_lock:
            old = self._fd
            if self._win is not None:
                raise AssertionError("a new segment while the last one is still mapped")
            self._fd, self._segno, self._tail = fd, segno, SEGMENT_HEADER_SIZE
            self._written_back = SEGMENT_HEADER_SIZE
            self._durable = (segno, SEGMENT_HEADER_SIZE)
            self._marked, self._pending, self._reserved = SEGMENT_HEADER_SIZE, None, None
            self._marker_end = 0
            self._reused, self._ahead = written > SEGMENT_HEADER_SIZE, SEGMENT_HEADER_SIZE
            self._prepared, self._prepare_off = written, False
            self._file_end = size
        if old >= 0:
            os.close(old)

    def _now_ns(self) -> int:
        return self._clock_ns()

    def reserve(self, max_bytes: int) -> tuple[int, int]:
        """Return (segno, pos) where the next record of at most ``max_bytes`` will land,
        rolling over to a new segment first if it would not fit. Caller holds the store lock."""
        self._check_failed()
        fits = self._tail + max_bytes + RECORD_HEADER_SIZE <= self.segment_size
        if self._reserved is not None and fits:
            # Frozen until write(): an encrypting caller has bound this position into the
            # record's AES-GCM associated data, so a sync that completes in between must not
            # make write() put a commit marker in front of it.
            return self._reserved
        if not fits and self._tail > SEGMENT_HEADER_SIZE:
            self._rollover()
        if self._pending is None:
            dseg, dpos = self._durable
            if dseg == self._segno and dpos > self._marked:
                self._pending = dpos
        self._reserved = (self._segno, self._tail + (RECORD_HEADER_SIZE if self._pending is not None else 0))
        return self._reserved

    def _rollover(self) -> None:
        with self._sync_lock:
            with self._lock:
                self._seal()
            self._fdatasync(self._fd, self._segno)
        if not self._files:
            with self._cache_lock:
                self._sizes[self._segno] = self._tail
        try:
            self.faults.hit("journal.rollover")
            self.start_segment(self._segno + 1)
        except OSError as e:  # nothing was appended: the tail is unchanged and a retry may succeed
            if not self._files:
                self._suspend(e, f"cannot start journal segment {self._segno + 1}: {e}")
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise PoolFull("pool is full: no room for a new journal segment; free space "
                               "(delete volumes, fstrim) or grow the filesystem under the pool") from None
            self._fail(f"cannot start journal segment {self._segno + 1}: {e}")

    def write(self, buffers: list[bytes | memoryview]) -> int:
        """Write one record's buffers at the tail. Returns its location. Caller holds the store lock
        and called :meth:`reserve` with a bound on the size."""
        self._check_failed()
        self._reserved = None
        pos = self._tail
        marker = self._pending
        if marker is not None:  # goes first, in the same system call; reserve() counted it
            buffers = [pack_record_header(RecordHeader(REC_COMMIT, 0, 0, 0, 0, marker, 0, 0, self._now_ns()), b"",
                                          self._segno), *buffers]
        total = sum(map(len, buffers))
        if self._align and total >= ALIGN_FROM:  # the next record starts aligned (PoolBackend.append_alignment)
            pad = padding_after(pos + total, self._align)
            if pad and pos + total + pad <= self.segment_size:
                buffers = [*buffers, pack_padding(pad, self._now_ns(), self._segno)]
                total += pad
        with self._lock:
            direct = False
            try:
                action = self.faults.hit("journal.write")
                if action == "torn":
                    self._put(b"".join(bytes(b) for b in buffers)[: total // 2], pos)
                    os.kill(os.getpid(), 9)
                if not self._files:  # queued on the backend; a failure surfaces at the next sync
                    self.backend.write_segment(self._segno, pos, b"".join(buffers))
                elif total <= SMALL_RECORD and pos + total > self._prepared:
                    win = self._window(pos, total)
                    at = pos - self._win_start
                    for b in buffers:  # copied into the page cache; the caller may reuse its buffers
                        win[at : at + len(b)] = b
                        at += len(b)
                else:
                    direct = True
                    if self._reused and total <= SMALL_RECORD and pos + total > self._ahead - REUSED_AHEAD // 2:
                        self._read_ahead(pos + total)  # a large record covers its pages: none to read first
                    n = os.pwritev(self._fd, buffers, pos)
                    if n != total:
                        raise OSError(errno.ENOSPC, "short write to journal segment")
            except OSError as e:  # nothing of this record is acknowledged
                if direct:  # it may have left part of the record in the file
                    self._undo_write(pos)
                if not self._files:
                    self._suspend(e, f"journal write failed: {e}")
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise PoolFull("pool is full: the journal cannot take more data; free space "
                                   "(delete volumes, fstrim) or grow the filesystem under the pool") from None
                self._fail(f"journal write failed: {e}")
            self._tail = pos + total
            if (self._prewriter is not None and self._prepared - self._tail < PREWRITE_LOW and not self._prepare_off
                    and self.density.dense):
                self._prewriter.poke()
            if self._files and self._tail - self._written_back >= WRITEBACK_BYTES:
                try:
                    self.faults.hit("journal.writeback")
                    start_writeback(self._fd, self._written_back, self._tail - self._written_back)
                except OSError as e:
                    self._fail(f"journal writeback failed: {e}")
                self._written_back = self._tail
        self.appended_bytes += total
        if marker is not None:
            self._marked, self._pending = marker, None
            return make_loc(self._segno, pos + RECORD_HEADER_SIZE)
        return make_loc(self._segno, pos)

    def _put(self, data: bytes, pos: int) -> None:
        if self._files:
            os.pwrite(self._fd, data, pos)
        else:
            self.backend.write_segment(self._segno, pos, data)
            self.backend.flush_segment(self._segno)

    def _seal(self) -> None:
        """Cut the allocated space after the last record (caller holds ``_lock``), so only the
        newest segment can end in unwritten space, and only after a crash."""
        self._unmap()
        if not self._files:  # nothing is allocated ahead of the tail
            return
        try:
            if os.fstat(self._fd).st_size > self._tail or self._file_end > self._tail:
                os.ftruncate(self._fd, self._tail)  # also frees blocks allocated past the end of the file
            self._file_end = self._tail
        except OSError as e:
            self._fail(f"cannot trim the journal segment's preallocated space: {e}")

    def _undo_write(self, pos: int) -> None:
        self._unmap()  # its end may lie past the cut: a store there would raise SIGBUS
        self._prepared = min(self._prepared, pos)
        self._file_end = min(self._file_end, pos)
        try:
            os.ftruncate(self._fd, pos)
        except OSError as e:
            self._fail(f"cannot cut a failed journal write: {e}")

    # -- durability ----------------------------------------------------------------------
    def sync(self) -> None:
        """Make every record appended so far durable (group commit)."""
        with self._lock:
            target = (self._segno, self._tail)
        if not self.commits.lead(lambda: self._durable >= target):
            self._check_failed()  # as a leader would
            return
        try:
            with self._sync_lock:
                self._check_failed()
                if self._durable >= target:
                    return
                with self._lock:
                    reached = (self._segno, self._tail)
                self._fdatasync(self._fd, reached[0])  # also writes the pages stored through the map
                self._durable = max(self._durable, reached)
                self.density.observe(self.appended_bytes)
        finally:
            self.commits.done()

    def _fdatasync(self, fd: int, segno: int) -> None:
        try:
            self.faults.hit("journal.sync")
            if self._files:
                os.fdatasync(fd)
            else:
                self.backend.flush_segment(segno)
            self.syncs += 1
        except OSError as e:
            if not self._files:
                self._suspend(e, f"journal flush failed: {e}")
            self._fail(f"journal fdatasync failed: {e}")

    def unmarked(self) -> bool:
        """Whether the newest records are durable but no commit marker says so yet, and nothing
        was appended since (caller holds the store lock). Until a marker follows them, damage
        to them cannot be told from a torn tail after a crash (see :meth:`mark`)."""
        dseg, dpos = self._durable
        return (dseg, dpos) == (self._segno, self._tail) and dpos > self._marked and dpos != self._marker_end

    def mark(self) -> None:
        """Append a commit marker stating the durable position, and sync it (caller holds the
        store lock and saw :meth:`unmarked`). Damage to the records before it is then
        reported as corruption, never cut as a torn tail."""
        self.reserve(0)
        self.write([])
        self._marker_end = self._tail
        self.sync()

    def durable_position(self) -> tuple[int, int]:
        return self._durable

    def dirty(self) -> bool:
        return self._durable < (self._segno, self._tail)

    def stop_writes(self, why: str) -> None:
        """Refuse every later append and sync (the pool's ownership was lost)."""
        self.failed = why

    def _fail(self, why: str) -> None:
        self.failed = why
        raise VstorError(f"{why}; the array refuses further writes, stop it and run 'vstor pool check'")

    def _check_failed(self) -> None:
        if self.failed:
            raise VstorError(f"journal failed earlier ({self.failed}); stop the array and run 'vstor pool check'")
        outage = self.outage
        if outage is not None:
            raise outage.error(self.backend.describe())

    def close(self) -> None:
        if self._prewriter is not None:
            self._prewriter.close()
        with self._sync_lock:
            if self._fd == -2:  # no local file: wait for the writes in flight
                if not self.failed and self.outage is None:
                    self.backend.flush_segment(self._segno)
                self._fd = -1
            if self._fd >= 0:
                with self._lock:
                    self._unmap()
                    if not self.failed:
                        self._seal()
                if not self.failed:
                    os.fdatasync(self._fd)
                os.close(self._fd)
                self._fd = -1
        for fd in self._read_fds.values():
            os.close(fd)
        self._read_fds.clear()
        if self._own_backend:
            self.backend.close()
