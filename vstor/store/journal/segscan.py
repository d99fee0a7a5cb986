"""Scanning journal segments: every valid record in order, verified, for recovery, pool check
and journal consumers.

A mixin of Journal (writer.py), beside SegmentReader (segread.py), whose reads it uses.
Guarantees of the scan: every record it yields has valid header and frame checksums; a bad
record in any segment but the newest raises CorruptData, and so does one inside data a
commit marker states durable (unless salvaging); past the newest segment's last valid
record it stops and says why in ``ScanEnd``. A segment whose successor's header seals it
(SEG_SEALS_PREV: the journal resumed after an outage of a remote backend) is read only up to
the sealed end: what lies past it was never acknowledged (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import errno
import io
import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import xxhash

from vstor.errors import CorruptData
from vstor.store.backend.base import PoolBackend
from vstor.store.journal.format import (
    FRAME_ENTRY_SIZE,
    REC_COMMIT,
    REC_PAD,
    RECORD_HEADER_SIZE,
    RECORD_MAGIC,
    SEG_REUSED,
    SEGMENT_HEADER_SIZE,
    BadRecord,
    FrameEntry,
    RecordHeader,
    frame_bodies,
    make_loc,
    segment_flags,
    segment_seal,
    unpack_frame_table,
    unpack_record_header,
    unpack_segment_header,
    verify_header,
)
from vstor.store.journal.outage import Outage

__all__ = ["ScanEnd", "ScannedRecord", "SegmentScanner"]


@dataclass(frozen=True, slots=True)
class ScannedRecord:
    loc: int
    header: RecordHeader
    frames: tuple[FrameEntry, ...]
    payload: bytes  # frame data (not the table), as stored
    sums: bytes = b""  # the block sums as stored (version 3; pool check compares them with the frames)


@dataclass
class ScanEnd:
    """Where a scan stopped: the first byte past the last valid record, and why."""

    segno: int
    pos: int
    reason: str = ""  # empty: clean end of the segment
    unwritten: bool = False  # stopped at allocated space never written (zeros to the end of the file)


class SegmentScanner:
    # Provided by Journal (and SegmentReader).
    _lock: Any
    _fd: int  # -1: no live segment; -2: a live segment without a local file (remote backend)
    _files: bool
    backend: PoolBackend
    _segno: int
    _tail: int
    pool_uuid: bytes
    salvage: bool
    salvaged: dict | None
    headers_rewritten: list[int]
    rewrite_header: Callable[[int], None]
    path: Callable[[int], str]
    segments: Callable[[], list[int]]
    _seals: dict[int, int | None]
    outage: Outage | None
    _durable: tuple[int, int]
    pread: Callable[[int, int, int], bytes]

    def _open_segment(self, segno: int) -> io.RawIOBase:
        """A segment as an unbuffered binary file: the file itself on a local pool."""
        if self._files:
            return open(self.path(segno), "rb", buffering=0)  # noqa: SIM115 (the callers close it)
        return _BackendFile(self.backend, segno)

    def scan(self, segno: int, pos: int, end: ScanEnd) -> Iterator[ScannedRecord]:
        """Yield every valid record from (segno, pos) to the end of the journal, verifying
        header and frame checksums. ``end`` is filled in with where and why the scan stopped.
        A bad record anywhere but the newest segment's tail raises CorruptData."""
        with self._lock:  # the live segment is read up to the tail, past which it holds zeros
            live = (self._segno, self._tail) if self._fd != -1 else (-1, 0)
        segs = [s for s in self.segments() if s >= segno]
        end.segno, end.pos, end.reason, end.unwritten = segno, pos, "", False
        for i, s in enumerate(segs):
            limit = live[1] if s == live[0] else self.sealed_end(s) if i < len(segs) - 1 else None
            yield from self._scan_segment(s, pos if s == segno else SEGMENT_HEADER_SIZE, end, limit)
            if end.reason and i < len(segs) - 1:
                raise CorruptData(f"journal segment {s} is damaged at offset {end.pos} ({end.reason}) "
                                  f"but newer segments follow; run 'vstor pool check'")

    def scan_one(self, segno: int, end: ScanEnd) -> Iterator[ScannedRecord]:
        """Yield the valid records of one whole segment (pool check), like :meth:`scan`."""
        with self._lock:
            limit = self._tail if self._fd != -1 and segno == self._segno else None
        if limit is None:
            limit = self.sealed_end(segno)
        yield from self._scan_segment(segno, SEGMENT_HEADER_SIZE, end, limit)

    def sealed_end(self, segno: int) -> int | None:
        """Where segment ``segno`` ends if the header of segment ``segno + 1`` seals it, else
        None (also when there is no such segment, or its header is not valid)."""
        if segno in self._seals:
            return self._seals[segno]
        try:
            head = self.pread(segno + 1, 0, SEGMENT_HEADER_SIZE)
            unpack_segment_header(head, self.pool_uuid, segno + 1)
        except (CorruptData, BadRecord, FileNotFoundError):
            return None
        end = self._seals[segno] = segment_seal(head)  # a valid header never changes
        return end

    def _scan_segment(self, segno: int, pos: int, end: ScanEnd, limit: int | None) -> Iterator[ScannedRecord]:
        end.segno, end.pos, end.reason, end.unwritten = segno, pos, "", False
        with self._open_segment(segno) as raw_f:
            f = io.BufferedReader(raw_f, buffer_size=8 << 20)
            head = f.read(SEGMENT_HEADER_SIZE)
            reused = False
            try:
                unpack_segment_header(head, self.pool_uuid, segno)
                reused = bool(segment_flags(head) & SEG_REUSED)
            except BadRecord as e:
                if not self._bad_segment_header(segno, head, e):  # a creation a crash cut: nothing in it
                    end.reason = "segment never started"
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
                    verify_header(raw, table, hcsum, segno) if len(table) == header.table_size else _short()
                    frames = unpack_frame_table(table, header.nframes)
                    payload = f.read(header.stored - header.table_size)
                    if len(payload) != header.stored - header.table_size:
                        raise BadRecord("record cut short")
                    _verify_padding(payload) if header.rtype == REC_PAD else _verify_frames(frames, payload)
                except BadRecord as e:
                    covered, clean = self._durable_after(segno, pos, reused)
                    if clean:  # zeros (allocated, never written) or an earlier use's records: a clean end
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
                if header.rtype in (REC_COMMIT, REC_PAD):
                    pos += header.total_size
                    end.pos = pos
                    continue
                yield ScannedRecord(make_loc(segno, pos), header, frames, payload,
                                    table[header.nframes * FRAME_ENTRY_SIZE :] if header.sums else b"")
                pos += header.total_size
                end.pos = pos

    def _bad_segment_header(self, segno: int, head: bytes, why: BadRecord) -> bool:
        """Decide what a segment header that fails to parse means. Returns False for a segment
        whose creation a crash cut: no byte past the header, or only zeros (start_segment syncs
        the header before any record goes in), so no map can point into it. Any other bad
        header is damage: with ``salvage`` a header that fails its checksum is rewritten (the
        records carry their own checksums) and True is returned; otherwise CorruptData is
        raised. Such a segment is never cut: maps may point into it."""
        if self.backend.segment_size(segno) <= SEGMENT_HEADER_SIZE or self._durable_after(segno, 0)[1]:
            return False
        if self.salvage and str(why) == "bad segment header":
            self.rewrite_header(segno)
            self.headers_rewritten.append(segno)
            return True
        raise CorruptData(f"journal segment {segno} has a damaged header ({why}); its records may still be "
                          "intact: 'vstor pool check --repair' rewrites the header")

    def _durable_after(self, segno: int, pos: int, reused: bool = False) -> tuple[int, bool]:
        """What follows the last valid record of a segment, at ``pos``: the highest durable
        position a valid commit marker after it states (0 if none), and whether it is a clean
        end -- only zeros (allocated, never written), or, in a reused file (SEG_REUSED), no
        record valid in this segment at all (what is there is the file's earlier use, whose
        records fail this segment's seeded checksums). Anything else is a torn write or damage."""
        with self._segment_bytes(segno) as (data, fd):
            if _zeros_from(data, pos, fd):
                return 0, True
            best, found, k = 0, False, data.find(RECORD_MAGIC, pos + 1)
            while k >= 0:
                raw = data[k : k + RECORD_HEADER_SIZE]
                try:
                    header, hcsum = unpack_record_header(raw)
                    verify_header(raw, data[k + RECORD_HEADER_SIZE : k + RECORD_HEADER_SIZE + header.table_size],
                                  hcsum, segno)
                    found = True
                    if header.rtype == REC_COMMIT:
                        best = max(best, header.offset)
                except BadRecord:
                    pass
                k = data.find(RECORD_MAGIC, k + 1)
        return best, reused and not found

    @contextlib.contextmanager
    def _segment_bytes(self, segno: int) -> Iterator[tuple[Any, int]]:
        """A whole segment, bytes-like: a read-only map of a local file (a reused file's earlier
        records may fill it, hundreds of MiB: nothing is copied), else its bytes; with the
        local file's descriptor (-1 for a remote pool)."""
        if not self._files:
            with self._open_segment(segno) as f:
                yield f.readall(), -1
            return
        with open(self.path(segno), "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                yield b"", -1
                return
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                yield m, f.fileno()


def _zeros_from(data: Any, pos: int, fd: int = -1, block: int = 8 << 20) -> bool:
    """Whether ``data`` holds only zero bytes from ``pos`` on (read in blocks: it may be a map).
    With the file's descriptor ``fd``, only its data is read: what the filesystem reports as
    holes (``SEEK_DATA``/``SEEK_HOLE``; ext4 and XFS count space allocated and never written,
    with no page cached, as one) reads as zeros. The live segment file is allocated whole when
    it starts (tailspace.py): reading its ~250 MiB never written took recovery 0.6-1.8 s. The
    stretches are listed before any is read: reading caches pages (and the kernel's read-ahead
    more), which then count as data."""
    end = len(data)
    for start, stop in (_data_spans(fd, pos, end) if fd >= 0 else [(pos, end)]):
        for b in range(start, stop, block):
            if data[b : min(b + block, stop)].strip(b"\0"):
                return False
    return True


def _data_spans(fd: int, pos: int, end: int) -> list[tuple[int, int]]:
    """The stretches of data of the file between ``pos`` and ``end``; all of it when the
    filesystem cannot tell holes apart."""
    spans: list[tuple[int, int]] = []
    at = pos
    while at < end:
        try:
            start = os.lseek(fd, at, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            return [*spans, (at, end)]
        if start >= end:
            break
        stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
        spans.append((start, stop))
        at = stop
    return spans


class _BackendFile(io.RawIOBase):
    """A segment of a backend without local files, read like an unbuffered file."""

    def __init__(self, backend: PoolBackend, segno: int) -> None:
        super().__init__()
        self._backend, self._segno, self._pos = backend, segno, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET:
            raise io.UnsupportedOperation("segments seek from the start only")
        self._pos = offset
        return offset

    def tell(self) -> int:
        return self._pos

    def readinto(self, buf: Any) -> int:
        data = self._backend.read_segment(self._segno, self._pos, len(buf))
        memoryview(buf).cast("B")[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        data = self._backend.read_segment(self._segno, self._pos, max(self._backend.segment_size(self._segno)
                                                                       - self._pos, 0))
        self._pos += len(data)
        return data


def _short() -> None:
    raise BadRecord("short frame table")


def _verify_padding(payload: bytes) -> None:
    if payload.count(0) != len(payload):
        raise BadRecord("padding record holds data")


def _verify_frames(frames: tuple[FrameEntry, ...], payload: bytes) -> None:
    for fe, body in zip(frames, frame_bodies(frames, payload), strict=True):
        if len(body) != fe.stored_len or (fe.stored_len and xxhash.xxh3_64_intdigest(body) != fe.csum):
            raise BadRecord("frame checksum mismatch")
    if sum(fe.stored_len for fe in frames) != len(payload):
        raise BadRecord("frame lengths do not add up")
