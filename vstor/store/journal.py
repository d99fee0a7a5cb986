"""The write journal: numbered append-only segment files with group commit.

The journal holds the data itself: volume maps point at records inside segments, so
every payload byte is written once. Guarantees (the block-device contract rests on them):

* ``write`` returns once the record is in the segment file's page cache: later reads and
  scans see it, and it survives the death of the process (kill -9); only a crash of the
  machine before the next sync can lose it. A small record (up to SMALL_RECORD) is copied
  into a shared memory map of the segment (a window of WINDOW_BYTES, allocated with
  fallocate before it is mapped), so a 4 KiB write costs a memory copy, not a system call
  that gives up the GIL. A larger record is written with one pwritev.
* ``sync`` returns once every record appended before the call is on stable storage.
  Concurrent callers share one fdatasync (group commit); a caller whose records were
  made durable by another's fdatasync returns without a system call.
* A segment is fdatasync'ed before the first record is appended to its successor, so a
  crash can tear only the newest segment's tail. Recovery cuts a torn tail and never
  appends to that segment again; any bad record before the newest segment's tail is
  corruption and is reported, never skipped.
* A failed write or fdatasync puts the journal in a failed state (EIO on every later
  append and sync) instead of guessing what reached the disk (the fsyncgate lesson).
"""

from __future__ import annotations

import contextlib
import errno
import io
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import xxhash

from vstor.durable import remove_durably, sync_dir
from vstor.errors import CorruptData, PoolFull, VstorError
from vstor.faults import NO_FAULTS, Faults
from vstor.store.format import (
    FRAME_ENTRY_SIZE,
    MAX_SEGMENT_SIZE,
    REC_COMMIT,
    RECORD_HEADER_SIZE,
    RECORD_MAGIC,
    SEGMENT_HEADER_SIZE,
    BadRecord,
    FrameEntry,
    RecordHeader,
    make_loc,
    pack_record_header,
    pack_segment_header,
    segment_name,
    unpack_frame_table,
    unpack_record_header,
    unpack_segment_header,
    verify_header,
)


@dataclass(frozen=True, slots=True)
class ScannedRecord:
    loc: int
    header: RecordHeader
    frames: tuple[FrameEntry, ...]
    payload: bytes  # frame data (not the table), as stored


@dataclass
class ScanEnd:
    """Where a scan stopped: the first byte past the last valid record, and why."""

    segno: int
    pos: int
    reason: str = ""  # empty: clean end of the segment
    unwritten: bool = False  # stopped at allocated space never written (zeros to the end of the file)


SMALL_RECORD = 64 * 1024  # records up to this size are copied into the mapped window
WINDOW_BYTES = 4 * 1024 * 1024  # the mapped, preallocated part of the segment at the tail
PREFETCH_MIN = 256 * 1024
PREFETCH_BYTES = 16 * 1024 * 1024


class Journal:
    def __init__(self, directory: str, pool_uuid: bytes, segment_size: int, faults: Faults = NO_FAULTS,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        if not SEGMENT_HEADER_SIZE < segment_size <= MAX_SEGMENT_SIZE:
            raise ValueError("bad segment size")
        self.dir = directory
        self.pool_uuid = pool_uuid
        self.segment_size = segment_size
        self.faults = faults
        self._clock_ns = clock_ns
        self._lock = threading.Lock()  # tail state; taken by appenders
        self._sync_lock = threading.Lock()  # one fdatasync at a time
        self._fd = -1
        self._segno = 0
        self._tail = 0  # where the next record goes
        self._win: mmap.mmap | None = None  # shared map of [_win_start, _win_end) of the segment
        self._win_start = self._win_end = 0
        self._durable = (0, 0)
        self._marked = 0  # position in the current segment covered by the last commit marker
        self._pending: int | None = None  # a marker decided by reserve(), written by write()
        self._reserved: tuple[int, int] | None = None  # where the record being built will land
        self._read_fds: dict[int, int] = {}
        self._prefetched: dict[int, int] = {}  # segment -> end of the last prefetch asked for
        self.failed: str | None = None
        self.salvage = False  # pool check --repair: cut damaged durable data in the newest segment
        self.salvaged: dict | None = None  # what salvage cut
        self.appended_bytes = 0
        self.syncs = 0

    # -- segment files -------------------------------------------------------------------
    def path(self, segno: int) -> str:
        return os.path.join(self.dir, segment_name(segno))

    def segments(self) -> list[int]:
        out = []
        for name in os.listdir(self.dir):
            if name.endswith(".seg") and name[:-4].isdigit():
                out.append(int(name[:-4]))
        return sorted(out)

    def segment_bytes(self, segno: int) -> int:
        if segno == self._segno:
            return self._tail
        try:
            return os.stat(self.path(segno)).st_size
        except FileNotFoundError:
            return 0

    @property
    def current_segno(self) -> int:
        return self._segno

    def tail(self) -> tuple[int, int]:
        return self._segno, self._tail

    def start_segment(self, segno: int) -> None:
        """Open a fresh segment for appending (at startup and at rollover)."""
        fd = os.open(self.path(segno), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            header = pack_segment_header(self.pool_uuid, segno, self._now_ns())
            os.pwrite(fd, header, 0)
            os.fdatasync(fd)
            sync_dir(self.dir)
        except BaseException:  # remove the half-made file, or the O_EXCL retry could never succeed
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path(segno))
            raise
        with self._sync_lock:
            old = self._fd
            if self._win is not None:
                raise AssertionError("a new segment while the last one is still mapped")
            self._fd, self._segno, self._tail = fd, segno, SEGMENT_HEADER_SIZE
            self._durable = (segno, SEGMENT_HEADER_SIZE)
            self._marked, self._pending, self._reserved = SEGMENT_HEADER_SIZE, None, None
        if old >= 0:
            os.close(old)

    def _now_ns(self) -> int:
        return self._clock_ns()

    # -- appending -----------------------------------------------------------------------
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
            self._fdatasync(self._fd)
        try:
            self.faults.hit("journal.rollover")
            self.start_segment(self._segno + 1)
        except OSError as e:  # nothing was appended: the tail is unchanged and a retry may succeed
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
            buffers = [pack_record_header(RecordHeader(REC_COMMIT, 0, 0, 0, 0, marker, 0, 0, self._now_ns()), b""),
                       *buffers]
        total = sum(len(b) for b in buffers)
        with self._lock:
            direct = False
            try:
                action = self.faults.hit("journal.write")
                if action == "torn":
                    os.pwrite(self._fd, b"".join(bytes(b) for b in buffers)[: total // 2], pos)
                    os.kill(os.getpid(), 9)
                if total <= SMALL_RECORD:
                    win = self._window(pos, total)
                    at = pos - self._win_start
                    for b in buffers:  # copied into the page cache; the caller may reuse its buffers
                        win[at : at + len(b)] = b
                        at += len(b)
                else:
                    direct = True
                    n = os.pwritev(self._fd, buffers, pos)
                    if n != total:
                        raise OSError(errno.ENOSPC, "short write to journal segment")
            except OSError as e:  # nothing of this record is acknowledged
                if direct:  # it may have left part of the record in the file
                    self._undo_write(pos)
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise PoolFull("pool is full: the journal cannot take more data; free space "
                                   "(delete volumes, fstrim) or grow the filesystem under the pool") from None
                self._fail(f"journal write failed: {e}")
            self._tail = pos + total
        self.appended_bytes += total
        if marker is not None:
            self._marked, self._pending = marker, None
            return make_loc(self._segno, pos + RECORD_HEADER_SIZE)
        return make_loc(self._segno, pos)

    def _window(self, pos: int, size: int) -> mmap.mmap:
        """The mapped window holding [pos, pos + size), moved there if needed (caller holds
        ``_lock``). The window's blocks are allocated before it is mapped, so a full
        filesystem is an ENOSPC here and never a SIGBUS on a store into the map."""
        if self._win is not None and self._win_start <= pos and pos + size <= self._win_end:
            return self._win
        self._unmap()
        start = pos - pos % mmap.ALLOCATIONGRANULARITY
        end = min(max(start + WINDOW_BYTES, pos + size), self.segment_size)
        os.posix_fallocate(self._fd, start, end - start)  # also extends the file to ``end``
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

    def _seal(self) -> None:
        """Cut the allocated space after the last record (caller holds ``_lock``), so only the
        newest segment can end in unwritten space, and only after a crash."""
        self._unmap()
        try:
            if os.fstat(self._fd).st_size > self._tail:
                os.ftruncate(self._fd, self._tail)
        except OSError as e:
            self._fail(f"cannot trim the journal segment's preallocated space: {e}")

    def _undo_write(self, pos: int) -> None:
        self._unmap()  # its end may lie past the cut: a store there would raise SIGBUS
        try:
            os.ftruncate(self._fd, pos)
        except OSError as e:
            self._fail(f"cannot cut a failed journal write: {e}")

    # -- durability ----------------------------------------------------------------------
    def sync(self) -> None:
        """Make every record appended so far durable (group commit)."""
        with self._lock:
            target = (self._segno, self._tail)
        with self._sync_lock:
            self._check_failed()
            if self._durable >= target:
                return
            with self._lock:
                reached = (self._segno, self._tail)
            self._fdatasync(self._fd)  # also writes the pages stored through the map
            self._durable = max(self._durable, reached)

    def _fdatasync(self, fd: int) -> None:
        try:
            self.faults.hit("journal.sync")
            os.fdatasync(fd)
            self.syncs += 1
        except OSError as e:
            self._fail(f"journal fdatasync failed: {e}")

    def durable_position(self) -> tuple[int, int]:
        return self._durable

    def dirty(self) -> bool:
        return self._durable < (self._segno, self._tail)

    def _fail(self, why: str) -> None:
        self.failed = why
        raise VstorError(f"{why}; the array refuses further writes, stop it and run 'vstor pool check'")

    def _check_failed(self) -> None:
        if self.failed:
            raise VstorError(f"journal failed earlier ({self.failed}); stop the array and run 'vstor pool check'")

    # -- reading -------------------------------------------------------------------------
    def pread(self, segno: int, pos: int, size: int) -> bytes:
        fd = self._read_fd(segno)
        data = os.pread(fd, size, pos)
        self._prefetch(fd, segno, pos, size)
        return data

    def pread_into(self, segno: int, pos: int, view: memoryview) -> int:
        """Read into ``view`` (no intermediate bytes); returns the bytes read."""
        fd = self._read_fd(segno)
        n = os.preadv(fd, [view], pos)
        self._prefetch(fd, segno, pos, len(view))
        return n

    def _read_fd(self, segno: int) -> int:
        fd = self._read_fds.get(segno)
        if fd is None:
            try:
                fd = os.open(self.path(segno), os.O_RDONLY)
            except FileNotFoundError:
                raise CorruptData(f"journal segment {segno} is missing") from None
            fd = self._read_fds.setdefault(segno, fd)
        return fd

    def _prefetch(self, fd: int, segno: int, pos: int, size: int) -> None:
        if size >= PREFETCH_MIN:
            # A large read is usually part of a sequential one, and the kernel keeps about one
            # FUSE read in flight: start fetching what follows in the segment now, so the disk
            # works while this request is verified and copied (cold sequential read 580 -> see
            # docs/benchmarks.md). Asynchronous, but not free: the call walks the page cache of
            # its whole range (about 100 us for 16 MiB), so it is made again only once the reads
            # have used half of what the last one asked for.
            ahead = self._prefetched.get(segno, -1)
            end = pos + size
            if end > ahead - PREFETCH_BYTES // 2 or end < ahead - PREFETCH_BYTES:  # half used, or a jump back
                os.posix_fadvise(fd, end, PREFETCH_BYTES, os.POSIX_FADV_WILLNEED)
                self._prefetched[segno] = end + PREFETCH_BYTES

    def read_header_raw(self, loc_segno: int, pos: int) -> tuple[RecordHeader, bytes]:
        """Read and verify a record's header; return it with its raw frame table."""
        raw = self.pread(loc_segno, pos, RECORD_HEADER_SIZE + 64 * FRAME_ENTRY_SIZE)
        try:
            header, hcsum = unpack_record_header(raw)
            table = raw[RECORD_HEADER_SIZE : RECORD_HEADER_SIZE + header.table_size]
            if len(table) != header.table_size:
                raise BadRecord("short frame table")
            verify_header(raw, table, hcsum)
        except BadRecord as e:
            raise CorruptData(f"record at segment {loc_segno} offset {pos}: {e}") from None
        return header, table

    def read_header(self, loc_segno: int, pos: int) -> tuple[RecordHeader, tuple[FrameEntry, ...]]:
        """Read and verify a record's header and decoded frame table."""
        header, table = self.read_header_raw(loc_segno, pos)
        return header, unpack_frame_table(table, header.nframes)

    # -- scanning ------------------------------------------------------------------------
    def scan(self, segno: int, pos: int, end: ScanEnd) -> Iterator[ScannedRecord]:
        """Yield every valid record from (segno, pos) to the end of the journal, verifying
        header and frame checksums. ``end`` is filled in with where and why the scan stopped.
        A bad record anywhere but the newest segment's tail raises CorruptData."""
        with self._lock:  # the live segment is read up to the tail, past which it holds zeros
            live = (self._segno, self._tail) if self._fd >= 0 else (-1, 0)
        segs = [s for s in self.segments() if s >= segno]
        end.segno, end.pos, end.reason, end.unwritten = segno, pos, "", False
        for i, s in enumerate(segs):
            limit = live[1] if s == live[0] else None
            yield from self._scan_segment(s, pos if s == segno else SEGMENT_HEADER_SIZE, end, limit)
            if end.reason and i < len(segs) - 1:
                raise CorruptData(f"journal segment {s} is damaged at offset {end.pos} ({end.reason}) "
                                  f"but newer segments follow; run 'vstor pool check'")

    def _scan_segment(self, segno: int, pos: int, end: ScanEnd, limit: int | None) -> Iterator[ScannedRecord]:
        end.segno, end.pos, end.reason, end.unwritten = segno, pos, "", False
        with open(self.path(segno), "rb", buffering=0) as raw_f:
            f = io.BufferedReader(raw_f, buffer_size=8 << 20)
            head = f.read(SEGMENT_HEADER_SIZE)
            try:
                unpack_segment_header(head, self.pool_uuid, segno)
            except BadRecord as e:
                end.reason = str(e)
                end.pos = 0
                return
            f.seek(pos)
            while limit is None or pos < limit:
                raw = f.read(RECORD_HEADER_SIZE)
                if not raw:
                    return
                try:
                    header, hcsum = unpack_record_header(raw)
                    table = f.read(header.table_size)
                    verify_header(raw, table, hcsum) if len(table) == header.table_size else _short()
                    frames = unpack_frame_table(table, header.nframes)
                    payload = f.read(header.stored - header.table_size)
                    if len(payload) != header.stored - header.table_size:
                        raise BadRecord("record cut short")
                    _verify_frames(frames, payload)
                except BadRecord as e:
                    covered, zeros = self._durable_after(segno, pos)
                    if zeros:  # allocated for the mapped window, never written: a clean end
                        end.unwritten = True
                        return
                    end.reason = str(e)
                    if covered > pos and self.salvage:
                        self.salvaged = {"segment": segno, "offset": pos, "durable_up_to": covered, "reason": str(e)}
                        return  # cut here like a torn tail; the caller reports the loss
                    if covered > pos:
                        raise CorruptData(
                            f"journal segment {segno} is damaged at offset {pos} ({e}) inside data an fsync "
                            f"had made durable (a commit marker covers it up to {covered}): acknowledged "
                            "writes are damaged; run 'vstor pool check'") from None
                    return
                if header.rtype == REC_COMMIT:
                    pos += header.total_size
                    end.pos = pos
                    continue
                yield ScannedRecord(make_loc(segno, pos), header, frames, payload)
                pos += header.total_size
                end.pos = pos

    def _durable_after(self, segno: int, pos: int) -> tuple[int, bool]:
        """The highest durable position stated by a valid commit marker after ``pos`` (0 if none),
        and whether the file holds only zeros from ``pos`` on."""
        with open(self.path(segno), "rb") as f:
            f.seek(pos)
            data = f.read()
        if not data.strip(b"\0"):
            return 0, True
        best, k = 0, data.find(RECORD_MAGIC, 1)
        while k >= 0:
            raw = data[k : k + RECORD_HEADER_SIZE]
            try:
                header, hcsum = unpack_record_header(raw)
                if header.rtype == REC_COMMIT:
                    verify_header(raw, b"", hcsum)
                    best = max(best, header.offset)
            except BadRecord:
                pass
            k = data.find(RECORD_MAGIC, k + 1)
        return best, False

    def truncate_segment(self, segno: int, pos: int) -> None:
        """Cut a torn tail (recovery only)."""
        fd = os.open(self.path(segno), os.O_RDWR)
        try:
            os.ftruncate(fd, pos)
            os.fsync(fd)
        finally:
            os.close(fd)

    def delete_segment(self, segno: int) -> None:
        self._prefetched.pop(segno, None)
        fd = self._read_fds.pop(segno, None)
        if fd is not None:
            os.close(fd)
        remove_durably(self.path(segno))

    def close(self) -> None:
        with self._sync_lock:
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


def _short() -> None:
    raise BadRecord("short frame table")


def _verify_frames(frames: tuple[FrameEntry, ...], payload: bytes) -> None:
    view = memoryview(payload)
    off = 0
    for fe in frames:
        body = view[off : off + fe.stored_len]
        if len(body) != fe.stored_len or (fe.stored_len and xxhash.xxh3_64_intdigest(body) != fe.csum):
            raise BadRecord("frame checksum mismatch")
        off += fe.stored_len
    if off != len(view):
        raise BadRecord("frame lengths do not add up")
