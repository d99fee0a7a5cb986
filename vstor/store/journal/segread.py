"""Reading journal segments: verified record headers and data reads.

A mixin of Journal (writer.py), split out to keep each module readable: the append side
(tail, group commit, rollover) stays there, and the scan that recovery, pool check and journal
consumers use is segscan.py. Reads never take the appenders' lock except to learn where the
live segment's tail is. Data reads ask for no read-ahead of their own: the kernel's
read-ahead of each segment file follows a sequential volume read, and an explicit
``posix_fadvise(WILLNEED)`` made cold sequential reads slower (docs/benchmarks.md §1,
"Sequential read on a faster machine; read-ahead withdrawn"). The exception is ``prefetch``,
which the read path calls only for the small records of a request of many pieces (an aged
volume), whose positions no read-ahead can guess, and of a reader's stream past the window
the kernel reads ahead of it (``kernel_readahead``, :func:`device_readahead`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import NoReturn

from vstor.errors import CorruptData, Unavailable, VstorError, WouldBlock
from vstor.store.backend.base import PoolBackend
from vstor.store.journal.format import (
    FRAME_ENTRY_SIZE,
    RECORD_HEADER_SIZE,
    BadRecord,
    FrameEntry,
    RecordHeader,
    unpack_frame_table,
    unpack_record_header,
    verify_header,
)
from vstor.store.journal.outage import Outage, classify

__all__ = ["HEADER_PREFETCH_DATA", "HEADER_READ", "PREFETCH_CALL", "SegmentReader", "device_readahead"]

PREFETCH_CALL = 1 << 20  # bytes asked for per WILLNEED call (prefetch)
PAGE = 4096  # what settle() reads of a range
_PROBE = bytearray(PAGE)  # settle()'s scratch: written by any thread, read by none
HEADER_PREFETCH_DATA = 8 << 10  # a header a nowait read misses: how much of what follows to fetch with it
# A header read: the header and 4 KiB of what follows, a frame table with block sums for
# records up to 1.5 MiB (every write through FUSE is at most 1 MiB). A larger table takes a
# second read. At 2 KiB the tables of 1 MiB records did: 4 us more on each header-cache miss,
# which a scan of an aged volume larger than the cache meets on most records.
HEADER_READ = RECORD_HEADER_SIZE + 128 * FRAME_ENTRY_SIZE


def device_readahead(path: str, sysfs: str = "/sys") -> int:
    """Bytes the kernel reads ahead of a sequential reader of files under ``path``: the
    ``read_ahead_kb`` of the block device its filesystem lies on (the whole disk's for a
    partition), which a sequential reader's window grows to. 0 when it cannot be told: a
    filesystem with no block device of its own (tmpfs, overlay, btrfs, NFS), or no sysfs."""
    try:
        dev = os.stat(path).st_dev
    except OSError:
        return 0
    base = f"{sysfs}/dev/block/{os.major(dev)}:{os.minor(dev)}"
    for queue in (f"{base}/queue", f"{base}/../queue"):  # a partition's queue is its disk's
        try:
            with open(f"{queue}/read_ahead_kb") as f:
                return int(f.read()) << 10
        except (OSError, ValueError):
            continue
    return 0


class SegmentReader:
    # Provided by Journal.
    _files: bool
    kernel_readahead: int  # device_readahead of the segment files' directory; 0 on a remote pool
    backend: PoolBackend
    _segno: int
    _read_fds: dict[int, int]
    path: Callable[[int], str]
    read_failures: int  # reads the backend failed (status)
    outage: Outage | None
    _durable: tuple[int, int]

    @property
    def local_files(self) -> bool:
        """Whether the segments are local files, read through the page cache (False: a remote
        pool, whose reads each cost a round trip and which :meth:`prefetch` cannot warm)."""
        return self._files

    def pread(self, segno: int, pos: int, size: int) -> bytes:
        if not self._files:
            return self._backend_read(segno, pos, size)
        return os.pread(self._read_fd(segno), size, pos)

    def pread_nowait(self, segno: int, pos: int, size: int, prefetch: int = 0) -> memoryview:
        """[pos, pos+size) of a segment if the page cache holds all of it (RWF_NOWAIT: the
        kernel copies what is cached and never waits for the disk). Else the kernel is asked
        to start reading it (WILLNEED) and WouldBlock(started=True) is raised: a retry soon
        finds it cached or in flight. A remote pool has no page cache of its segments:
        WouldBlock(started=False), the read must be made by waiting."""
        buf = bytearray(size)
        if self.pread_cached(segno, pos, memoryview(buf)):
            return memoryview(buf)
        # partly cached or missing (or short: damage, which the blocking read reports)
        self.missed(segno, pos, max(size, prefetch))

    def missed(self, segno: int, pos: int, size: int) -> NoReturn:
        """A read without waiting found [pos, pos+size) of a segment not all in the page cache:
        ask the kernel for it (WILLNEED) and raise WouldBlock(started=True), so that a retry
        soon finds it; on a remote pool, with no page cache to ask, WouldBlock(started=False)."""
        if not self._files:
            raise WouldBlock("a remote pool's segments are read by waiting")
        self.prefetch(segno, pos, size)
        raise WouldBlock("not in the page cache: being read", started=True)

    def pread_cached(self, segno: int, pos: int, view: memoryview) -> bool:
        """Fill ``view`` from [pos, pos+len(view)) of a segment if the page cache holds all of it
        (RWF_NOWAIT); False otherwise, having waited for nothing (always False on a remote
        pool, which has no page cache of its segments). On a miss the kernel itself starts
        reading the first page missing (measured: 4 KiB of an evicted file in the page cache
        0.2 s after one such miss), so a retry may find it. A filesystem that refuses
        RWF_NOWAIT (tmpfs, whose pages are memory) is simply read."""
        return self._cached_into(segno, pos, view) == len(view)

    def pread_cached_many(self, reads: list[tuple[int, int, memoryview]]) -> list[int]:
        """:meth:`pread_cached` of each (segment, position, view) of ``reads``, in one call: the
        small pieces of one aged read (reads/pieces.py). Returns the indices of the reads not
        filled: not all in the page cache, short, or failed for any reason (a missing segment
        included), which the caller reads again by waiting and so reports. All of them on a
        remote pool, which has no page cache of its segments."""
        missed: list[int] = []
        for i, (segno, pos, view) in enumerate(reads):
            try:
                if self._cached_into(segno, pos, view) != len(view):
                    missed.append(i)
            except (OSError, VstorError):
                missed.append(i)
        return missed

    def _cached_into(self, segno: int, pos: int, view: memoryview) -> int:
        """:meth:`pread_cached`, returning the bytes read: fewer than asked when the page cache
        holds only the start of the range or the file ends first, 0 when it holds nothing."""
        if not self._files:
            return 0
        fd = self._read_fd(segno)
        try:
            return os.preadv(fd, [view], pos, os.RWF_NOWAIT)
        except BlockingIOError:
            return 0
        except OSError as e:  # a filesystem without RWF_NOWAIT (tmpfs): its pages are memory anyway
            if e.errno != errno.EOPNOTSUPP:
                raise
            return os.preadv(fd, [view], pos)

    def pread_into(self, segno: int, pos: int, view: memoryview) -> int:
        """Read into ``view`` (no intermediate bytes on a local pool); returns the bytes read."""
        if not self._files:
            data = self._backend_read(segno, pos, len(view))
            view[: len(data)] = data
            return len(data)
        return os.preadv(self._read_fd(segno), [view], pos)

    def settle(self, segno: int, pos: int, size: int) -> int:
        """Wait for the kernel to read [pos, pos+size) of a segment, which :meth:`prefetch`
        asked for (a sweep, reads/sweep.py): read the range's last page, with which the
        read-ahead's I/O ends, into scratch; nothing is verified and nothing copied but that
        page. ``size``, or 0 when the segment ends first (or is a remote pool's, with no page
        cache to fill). Guarantee: only that the last page is cached on return; the pages
        before it are what the kernel kept of the request (all, unless memory ran short)."""
        if not self._files:
            return 0
        at = pos + size - PAGE
        return size if os.preadv(self._read_fd(segno), [memoryview(_PROBE)], at) == PAGE else 0

    def prefetch(self, segno: int, pos: int, size: int) -> None:
        """Ask the kernel to start reading [pos, pos+size) of a segment (WILLNEED), without
        waiting: the scattered small records of one read are then fetched together. In calls
        of at most PREFETCH_CALL bytes: the kernel reads only the first max(read_ahead_kb,
        max_sectors_kb) of each call (1.25 MiB on a loop device, whose read-ahead is
        smaller) and drops the rest without a word."""
        if self._files:  # a RADOS pool has no page cache of its segments to warm
            fd = self._read_fd(segno)
            for at in range(pos, pos + size, PREFETCH_CALL):
                os.posix_fadvise(fd, at, min(PREFETCH_CALL, pos + size - at), os.POSIX_FADV_WILLNEED)

    def _backend_read(self, segno: int, pos: int, size: int) -> bytes:
        outage = self.outage
        if outage is not None and segno == self._segno and pos + size > self._durable[1]:
            # Written since the last sync, before the outage: whether it reached the cluster is
            # not known until the journal resumes (and drops it), so it is not read meanwhile.
            raise outage.error(self.backend.describe())
        try:
            return self.backend.read_segment(segno, pos, size)
        except FileNotFoundError:
            raise CorruptData(f"journal segment {segno} is missing") from None
        except OSError as e:  # the host gets EIO (never ETIMEDOUT) within the client timeout
            self.read_failures += 1
            if classify(e.errno) is not None:
                raise Unavailable(f"cannot read journal segment {segno} from {self.backend.describe()}: {e}; "
                                  "reads resume when the cluster answers") from None
            raise VstorError(f"cannot read journal segment {segno} from {self.backend.describe()}: {e}") from None

    def _read_fd(self, segno: int) -> int:
        fd = self._read_fds.get(segno)
        if fd is None:
            try:
                fd = os.open(self.path(segno), os.O_RDONLY)
            except FileNotFoundError:
                raise CorruptData(f"journal segment {segno} is missing") from None
            fd = self._read_fds.setdefault(segno, fd)
        return fd

    def read_header_packed(self, loc_segno: int, pos: int, nowait: bool = False) -> tuple[RecordHeader, bytes]:
        """Read and verify a record's header; return it with its bytes as read: the 64-byte
        header followed by the table (frame table and block sums), the header cache's packed
        form. ``nowait``: from the page cache or WouldBlock (:meth:`pread_nowait`; a small
        record's data, which follows its header, is then fetched with it)."""
        size = HEADER_READ
        if nowait:  # what the page cache holds: a record near the end of its file has less after it
            buf = bytearray(size)
            raw: bytes | memoryview = memoryview(buf)[: self._cached_into(loc_segno, pos, memoryview(buf))]
        else:
            raw = self.pread(loc_segno, pos, size)
        try:
            if nowait and len(raw) < RECORD_HEADER_SIZE:
                self.missed(loc_segno, pos, size + HEADER_PREFETCH_DATA)
            header, hcsum = unpack_record_header(raw)
            if nowait and len(raw) < min(size, RECORD_HEADER_SIZE + header.table_size):
                self.missed(loc_segno, pos, size + HEADER_PREFETCH_DATA)  # the blocking read reports a cut record
            more = RECORD_HEADER_SIZE + header.table_size - len(raw)
            if more > 0 and len(raw) == size:  # block sums past the first read: read the rest
                rest = self.pread_nowait(loc_segno, pos + size, more) if nowait else self.pread(loc_segno, pos + size,
                                                                                                more)
                raw = bytes(raw) + bytes(rest)
            table = raw[RECORD_HEADER_SIZE : RECORD_HEADER_SIZE + header.table_size]
            if len(table) != header.table_size:
                raise BadRecord("short frame table")
            verify_header(raw, table, hcsum, loc_segno)
        except BadRecord as e:
            raise CorruptData(f"record at segment {loc_segno} offset {pos}: {e}") from None
        return header, bytes(raw[: RECORD_HEADER_SIZE + header.table_size])

    def read_header_raw(self, loc_segno: int, pos: int) -> tuple[RecordHeader, bytes]:
        """Read and verify a record's header; return it with its raw table."""
        header, packed = self.read_header_packed(loc_segno, pos)
        return header, packed[RECORD_HEADER_SIZE:]

    def read_header(self, loc_segno: int, pos: int) -> tuple[RecordHeader, tuple[FrameEntry, ...]]:
        """Read and verify a record's header and decoded frame table."""
        header, table = self.read_header_raw(loc_segno, pos)
        return header, unpack_frame_table(table, header.nframes)

    # -- scanning ------------------------------------------------------------------------
