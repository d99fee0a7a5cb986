"""The journal's space at its tail: where the next record's bytes go on a local pool.

A mixin of Journal (writer.py), kept apart so that the append path stays readable. Three
ways in, chosen by ``Journal.write``:

* the mapped window: a small record (up to SMALL_RECORD) in space never written is copied
  into a shared memory map of WINDOW_BYTES at the tail, allocated with ``posix_fallocate``
  before it is mapped, so a full filesystem is an ENOSPC at :meth:`_window` and never a
  SIGBUS on a store into the map;
* space already written -- a reused segment file (backend/spares.py), whose old contents
  :meth:`_read_ahead` asks for ahead of the tail, or zeros :meth:`_prepare_step` wrote ahead
  while syncs came often (prewrite.py) -- takes pwrite, never the map;
* a large record takes one pwritev.

A new segment file's blocks are allocated whole when it starts, past the end of the file
(:meth:`_allocate_segment`, ``vstor.durable.allocate_past_end``), so that large records land in
allocated blocks:
in process, 1 MiB writes into 256 MiB segments ran 11-20% faster than into delayed
allocation, and through NBD 18-21% (docs/benchmarks.md section 10, "Space allocated with the
segment"), where ext4 reserves and later allocates blocks page by page, on the writer's
thread. The price: a rollover waits 40-55 ms instead of 5-8 for the old segment's writeback
still queued (the writer is now faster than the disk). Where that fails (a nearly full filesystem), the mapped
window still allocates its own 4 MiB before mapping it, and large records take delayed
allocation as before. Either way the blocks allocated past the tail are counted as room the
journal already holds (:meth:`allocated_ahead`, the pool's SpaceGuard), and the space past
the last record is cut when the segment is sealed (writer.py) or recovered.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
from typing import Any

from vstor.durable import allocate_past_end, write_back
from vstor.faults import Faults
from vstor.store.journal.prewrite import PREWRITE_STEP, SyncDensity, prewrite_range

__all__ = ["REUSED_AHEAD", "SMALL_RECORD", "TailSpaceMixin", "WINDOW_BYTES"]

log = logging.getLogger("vstor.journal")

SMALL_RECORD = 64 * 1024  # records up to this size are copied into the mapped window
WINDOW_BYTES = 4 * 1024 * 1024  # the mapped, preallocated part of the segment at the tail

# A reused segment file (spares.py) is written with pwrite, never through the mapped window, and
# read into the page cache this far ahead of the tail. Its blocks hold an earlier segment's data:
# a store into a mapped page of such a file dirties the whole (large) folio, and every fdatasync
# then wrote back the folio around the tail again, measured +15% of device writes under 4 KiB
# writes with an fsync every 32 (docs/benchmarks.md section 12). A pwrite dirties only the blocks
# it covers; read ahead, the pages it lands in need no synchronous read first. Only small records
# ask for it: a large one overwrites whole pages but its last, and reading the old contents
# ahead of 1 MiB records read 28 MiB from the disk per 64 MiB written, for nothing.
REUSED_AHEAD = 1024 * 1024
_ZEROS = bytes(PREWRITE_STEP)


class TailSpaceMixin:
    # Provided by Journal.
    _lock: threading.Lock
    _fd: int
    _segno: int
    _tail: int
    _win: mmap.mmap | None
    _win_start: int
    _win_end: int
    _ahead: int
    _prepared: int
    _file_end: int  # the live segment file's size: blocks allocated (or written) up to here
    _prepare_off: bool
    prepared_bytes: int
    segment_size: int
    failed: str | None
    faults: Faults
    density: SyncDensity
    path: Any

    def _read_ahead(self, end: int) -> None:
        """Start reading the reused segment's pages from ``end`` on (caller holds ``_lock``), so
        that the pwrites landing there find them cached. Only a hint: a failure is ignored."""
        start = max(self._ahead, end)
        self._ahead = min(end + REUSED_AHEAD, self.segment_size)
        if self._ahead > start:
            try:
                os.posix_fadvise(self._fd, start, self._ahead - start, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass

    def _prepare_step(self) -> bool:
        """Write the next PREWRITE_STEP of zeros ahead of the tail and wait for their
        writeback (prewrite.py; run by the Prewriter's thread). False when nothing is to be
        prepared now. The zeros are written under the appenders' lock, so they land only past
        the tail as it stands; the writeback is waited for after it, through a descriptor of
        its own (``write_back`` may consume a write error, which the journal's fdatasync must
        still see). Waiting keeps at most one step under writeback: an fdatasync of the
        segment waits for every page being written, and with 16 MiB started at once one did
        every 0.3 s for 7-9 ms (benchmarks.md section 12)."""
        with self._lock:
            if self._fd < 0 or self.failed or self._prepare_off or not self.density.dense:
                return False
            rng = prewrite_range(self._tail, self._prepared, self.segment_size)
            if rng is None:
                return False
            start, end = rng
            segno = self._segno
            try:
                self.faults.hit("journal.prewrite")
                os.posix_fallocate(self._fd, start, end - start)  # a full filesystem fails here, not in writeback
                n = os.pwrite(self._fd, _ZEROS[: end - start], start)
            except OSError as e:
                self._prepare_off = True  # the records go through the map as before
                log.info("journal segment %d: space ahead of the tail not prepared (%s)", segno, e)
                return False
            self._prepared = start + n
            self._file_end = max(self._file_end, end)
            self.prepared_bytes += n
        try:
            fd = os.open(self.path(segno), os.O_RDONLY)
            try:
                write_back(fd, start, n)
            finally:
                os.close(fd)
        except OSError as e:  # a real write error reaches the journal's own fdatasync too
            log.info("journal segment %d: writeback of the space prepared ahead failed (%s)", segno, e)
        return True

    def _allocate_segment(self, fd: int, segno: int, written: int) -> int:
        """Allocate the blocks of the whole of a new segment file (``written``: its size, the
        header alone) before records go in, past its end (the file's size stays: see
        :func:`vstor.durable.allocate_past_end`); returns where its blocks are allocated to. Only an
        optimisation: when the filesystem refuses (ENOSPC near full, no fallocate), the file is
        left as it was and the records take the mapped window's allocation and delayed
        allocation, as before."""
        try:
            self.faults.hit("journal.allocate")
            allocate_past_end(fd, written, self.segment_size - written)
        except OSError as e:
            log.debug("journal segment %d: not allocated ahead (%s)", segno, e)
            return written
        return self.segment_size

    def allocated_ahead(self) -> int:
        """Bytes of the live segment file allocated (or written before, in a reused file) past
        its tail: room the next records take without taking more of the filesystem. Read
        without the lock: an estimate for the pool's free-space guard."""
        return max(0, self._file_end - self._tail)

    def _window(self, pos: int, size: int) -> mmap.mmap:
        """The mapped window holding [pos, pos + size), moved there if needed (caller holds
        ``_lock``). The window's blocks are allocated before it is mapped, so a full
        filesystem is an ENOSPC here and never a SIGBUS on a store into the map. On a nearly
        full filesystem the window shrinks to the record, so a trim (64 bytes) still fits."""
        if self._win is not None and self._win_start <= pos and pos + size <= self._win_end:
            return self._win
        self._unmap()
        start = pos - pos % mmap.ALLOCATIONGRANULARITY
        end = min(max(start + WINDOW_BYTES, pos + size), self.segment_size)
        try:
            os.posix_fallocate(self._fd, start, end - start)  # also extends the file to ``end``
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT) or end == pos + size:
                raise
            end = pos + size
            os.posix_fallocate(self._fd, start, end - start)
        self._file_end = max(self._file_end, end)
        self._win = mmap.mmap(self._fd, end - start, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                              offset=start)
        self._win_start, self._win_end = start, end
        return self._win

    def _unmap(self) -> None:
        """Drop the window (its pages stay in the page cache, dirty until written back)."""
        if self._win is not None:
            self._win.close()
            self._win = None
            self._win_start = self._win_end = 0
