"""The Store's read path: volume and snapshot reads, verified, into new bytes or into the
caller's buffer.

A mixin of Store (store.py), split out to keep each module readable. Extents are looked up
under the store lock; the I/O runs outside it, counted in ``_active_reads`` so that segment
deletion waits for it. Every byte returned is verified first: a frame that fails its
checksum or authentication raises CorruptData, and the caller gets no data.

Small reads try the fast path first (small.py). ``read_into`` serves FUSE reads
(vstor/fuse/direct.py). Where a piece is whole frames stored
as is (no compression, no encryption), the journal reads them straight into the caller's
buffer, which is then verified in place: no intermediate bytes object and no second copy.
Other pieces are decoded as ``read`` does and copied once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any, TypeVar

from vstor.errors import CorruptData, NotFound, VstorError, WouldBlock
from vstor.store.codec import first_bad_stored_frame
from vstor.store.journal.format import (
    BLOCK_SIZE,
    FRAME_ENTRY_SIZE,
    FRAME_SIZE,
    RECORD_HEADER_SIZE,
    loc_pos,
    loc_segno,
)
from vstor.store.journal.hcache import CachedRecord
from vstor.store.maps.chunkmap import VolumeMap
from vstor.store.reads.pieces import serve_whole
from vstor.store.reads.small import DATA_RECORDS, SMALL_READ, SmallReadMixin, first_bad_block, frames_of
from vstor.store.reads.sweep import COVERED, START
from vstor.store.reads.sweeper import SMALL_PIECE, SweepMixin

log = logging.getLogger("vstor.store")

_ZEROS = bytes(1 << 20)
PREFETCH_PIECES = 8  # a request of more pieces starts the reads of its small records at once
PREFETCH_MAX = SMALL_PIECE  # pieces up to this size count as small records
SPAN_SCRATCH = (1 << 20) + 2 * FRAME_SIZE  # scratch for a 1 MiB read's spans (_fill_spans), kept for reuse
SPARE_SCRATCH = 4  # scratch buffers kept: about as many as reads run at once on two cores
_NONE: frozenset[int] = frozenset()  # no record served by a span
T = TypeVar("T")


class ReadPathMixin(SmallReadMixin, SweepMixin):
    # Set by defrag.Defragmenter: told of host reads that found many pieces.
    defrag_hint: Callable[[int, int, int, int], None] | None = None
    _spare: list[bytearray]  # scratch buffers for _fill_spans (set by Store)
    _scan_turn: threading.Lock  # held by the read of a covered scan (_reading; set by Store)

    def read(self, vid: int, offset: int, size: int, sid: int = 0, nowait: bool = False) -> bytes | memoryview:
        """Read ``size`` bytes (fewer at the end) of volume ``vid``, or of its image in snapshot
        ``sid`` (bytes-like: a read within one stored frame may be a read-only view of it).
        Raises CorruptData rather than returning bytes that fail verification. With ``nowait``,
        raises WouldBlock instead of waiting for the disk or the cluster (see WouldBlock)."""
        if not sid and 0 < size <= SMALL_READ:
            view = memoryview(bytearray(size))
            if self._read_small(vid, offset, view, nowait):
                return view if nowait else bytes(view)  # callers that wait get bytes, as from the general path
        def produce(lineage: tuple[int, ...], offset: int, size: int, pieces: list, ask: bool) -> bytes | memoryview:
            return self.assemble(lineage, offset, size, pieces, nowait, ask)

        return self._reading(vid, offset, size, sid, produce, wait=not nowait)

    def read_into(self, vid: int, offset: int, view: memoryview, sid: int = 0) -> int:
        """Like :meth:`read`, into ``view`` (writable bytes); returns the bytes read. On an
        error ``view`` may hold partial or unverified data and must not be used."""
        if not sid and 0 < len(view) <= SMALL_READ and self._read_small(vid, offset, view, False):
            return len(view)

        def fill(lineage: tuple[int, ...], offset: int, size: int, pieces: list, ask: bool) -> int:
            self.assemble_into(lineage, offset, view[:size], pieces, ask=ask)
            return size

        return self._reading(vid, offset, len(view), sid, fill)

    def _reading(self, vid: int, offset: int, size: int, sid: int,
                 produce: Callable[[tuple[int, ...], int, int, list, bool], T], wait: bool = True) -> T:
        """``produce(lineage, offset, size, pieces, ask)`` of the image's pieces of the range, with
        the range registered as a read in flight; ``ask``: whether a read of many pieces should
        ask for its small records at once (False while a sweep covers its scan, sweep.py).

        The reads of scans that a sweep covers take turns (``_scan_turn``): each of their ~95
        page-cache reads a MiB gives up the GIL, and with the kernel's read-ahead sending a
        stream's requests to several FUSE threads at once, the threads handed the GIL to each
        other at nearly every one (a first pass through FUSE: 38,800 context switches for 1,024
        requests, against 1,400 with one FUSE thread). Waiting on a lock instead, the others
        leave it alone. Only a read whose records the sweep has read into the page cache takes
        a turn (``_still_warm``), so that turns do not serialize waits for the disk; no other
        read takes turns, nor a read that may not wait (``wait`` False: ``read(nowait=True)``,
        the NBD server's connection thread)."""
        with self._lock:
            vm, vsize = self._image(vid, sid)
            size = max(0, min(size, vsize - offset))
            pieces = vm.lookup(offset, offset + size) if size else []
            lineage = vm.lineage
            self._active_reads += 1
            scan = self._scan_read(vid, sid, offset, size) if len(pieces) > PREFETCH_PIECES else 0
        if scan == START:  # a scan of an aged image: read its scattered records ahead (sweep.py)
            self.sweep(vid, offset + size, sid)
        turn = scan == COVERED and wait  # one at a time: see above
        counted = True
        try:
            if turn and not self._still_warm(vid, sid, pieces):
                turn, scan = False, 0  # ahead of the sweep, or its pages gone: ask for the records
            if turn:
                with self._scan_turn:
                    self.faults.hit("scan.read")
                    out = produce(lineage, offset, size, pieces, False)
            else:
                out = produce(lineage, offset, size, pieces, scan != COVERED)
        except CorruptData as e:
            self.stats.add(read_errors=1)
            log.error("read error on volume %d offset %d (chunk %d): %s", vid, offset,
                      offset // self.sb.chunk_size, e)
            raise
        except WouldBlock:
            counted = False  # the retry counts it
            raise
        finally:
            self.done_reading()
            if counted:
                self.stats.request("read", size)
        if len(pieces) > 4 and not sid and self.defrag_hint is not None:  # once per read served, not per try
            self.defrag_hint(vid, offset, size, len(pieces))
        return out

    def _image(self, vid: int, sid: int) -> tuple[VolumeMap, int]:
        """With the store lock held: the map and size of volume ``vid``, or of its image in
        snapshot ``sid``; NotFound when it no longer exists."""
        if sid:
            vm = self.state.snap_maps.get((sid, vid))
            if vm is None:
                raise NotFound(f"snapshot {sid} of volume {vid} no longer exists")
            return vm, self.state.catalog.snaps[sid].member_by_id(vid).size
        vsize = self._volume(vid).size  # NotFound first
        return self.state.maps[vid], vsize

    def prefetch(self, vid: int, offset: int, size: int, sid: int = 0, large: bool = True) -> None:
        """Ask the kernel to start reading the stored data of [offset, offset+size) of volume
        ``vid`` (or of its image in snapshot ``sid``) and return without waiting: a hint from
        a reader that will read the range next (a sequential stream, ahead.py). Its small
        records are asked for as a read of many pieces asks for its own (:meth:`_prefetch`):
        on an aged volume dozens per MiB, scattered over the journal, which the disk then
        fetches side by side while the reader works. With ``large``, the frames of its larger
        pieces too (their header read first if the cache lacks it), as the NBD server asks
        where the device reads ahead less far than its stream's window; backup jobs leave those
        to the kernel's read-ahead of the segment files. A local pool
        only: a remote one has no page cache to warm, so nothing is looked up or read there.
        A missing volume, a damaged header or a failed hint is ignored: the read reports it."""
        if not self.journal.local_files:
            return
        with self._lock:
            vm = self.state.snap_maps.get((sid, vid)) if sid else self.state.maps.get(vid)
            if vm is None:
                return
            pieces = vm.lookup(offset, offset + size)
            self._active_reads += 1  # segment deletion waits, as for a read
        journal = self.journal
        try:
            self._prefetch(pieces, _shared_spans(pieces))
            if not large:
                return
            for s, e, loc in pieces:
                if e - s <= PREFETCH_MAX:
                    continue
                cached = self._header(loc)
                h = cached.header
                if h.offset <= s and e <= h.offset + h.length:
                    _f0, _f1, at, stored = frames_of(cached, loc_pos(loc), s, e)
                    journal.prefetch(loc_segno(loc), at, stored)
        except (OSError, VstorError):  # only a hint
            pass
        finally:
            self.done_reading()

    def lookup_for_read(self, vm: Any, offset: int, size: int) -> list:
        """Extents of a range of ``vm``, registering a reader; pair with :meth:`done_reading`."""
        with self._lock:
            self._active_reads += 1
            return vm.lookup(offset, offset + size)

    def done_reading(self) -> None:
        with self._lock:
            self._active_reads -= 1
            if not self._active_reads and self._read_waiters:  # a notify costs a read 0.3 us: only if awaited
                self._reads_done.notify_all()

    def wait_for_reads(self) -> None:
        """With the store lock held: wait until no read is in flight (segment deletion, an
        outage's resume). Reads start only under the lock, so none starts meanwhile."""
        self._read_waiters += 1
        try:
            while self._active_reads:
                self._reads_done.wait()
        finally:
            self._read_waiters -= 1

    def assemble(self, lineage: tuple[int, ...] | None, offset: int, size: int, pieces: list,
                 nowait: bool = False, ask: bool = True) -> bytes | memoryview:
        """The bytes of [offset, offset+size) from its mapped pieces; gaps are zeros. Built with
        one copy, or none when one piece covers it all (then possibly a view of a cached frame).
        ``nowait``: WouldBlock rather than wait for any piece. ``ask``: see :meth:`assemble_into`."""
        if not pieces:
            return bytes(size)
        if len(pieces) == 1 and pieces[0][0] == offset and pieces[0][1] == offset + size:
            s, e, loc = pieces[0]
            return self._read_extent(lineage, s, e, loc, nowait=nowait)
        # In a buffer when pieces of one record are cut from one read of it, or when many pieces
        # (an aged range) go through the small-read paths and the pass of pieces.py
        spans = _shared_spans(pieces)
        if spans or len(pieces) > PREFETCH_PIECES:
            buf = bytearray(size)
            self.assemble_into(lineage, offset, memoryview(buf), pieces, nowait, ask)
            return bytes(buf)
        parts: list[bytes | memoryview] = []
        at = offset
        for s, e, loc in pieces:
            if s > at:
                parts.append(bytes(s - at))
            parts.append(self._read_extent(lineage, s, e, loc, nowait=nowait))
            at = e
        if at < offset + size:
            parts.append(bytes(offset + size - at))
        return b"".join(parts)

    def assemble_into(self, lineage: tuple[int, ...] | None, offset: int, view: memoryview, pieces: list,
                      nowait: bool = False, ask: bool = True) -> None:
        """:meth:`assemble` into ``view``, which covers [offset, offset+len(view)). With ``ask``,
        a read of more than PREFETCH_PIECES pieces first asks for its small records at once
        (:meth:`_prefetch`); a scan that a sweep covers does not (sweep.py).

        A record that several pieces come from (an aged volume: a large write cut by small
        overwrites) is read and verified once, over the span from its first piece to its last,
        and each piece is copied out of that one read; without this, every piece re-read and
        re-verified the 64 KiB frames it touches (docs/benchmarks.md section 9)."""
        if len(pieces) == 1 and pieces[0][0] == offset and pieces[0][1] == offset + len(view):
            s, e, loc = pieces[0]
            data = self._read_extent(lineage, s, e, loc, into=view, nowait=nowait)  # one piece: the common small read
            if data is not view:
                view[:] = data
            return
        spans = _shared_spans(pieces)
        if ask and len(pieces) > PREFETCH_PIECES and not nowait:
            self._prefetch(pieces, spans)
        served: AbstractSet[int] = self._fill_spans(lineage, offset, view, spans, nowait) if spans else _NONE
        at = offset
        todo = []
        for piece in pieces:
            s = piece[0]
            if s > at:
                _zero(view[at - offset : s - offset])
            at = piece[1]
            if piece[2] not in served:
                todo.append(piece)
        if at < offset + len(view):
            _zero(view[at - offset :])
        unserved: AbstractSet[int] = _NONE  # taken by the pass below and missed: read by waiting
        if lineage is not None and len(todo) > 1 and self.journal.local_files:  # small records at once (pieces.py)
            todo, unserved = serve_whole(self._hcache.peek, self.journal.pread_cached_many, lineage, offset, view,
                                         todo)
        for s, e, loc in todo:
            part = view[s - offset : e - offset]
            if loc in unserved or not (lineage is not None and e - s <= SMALL_READ and
                                       self._small_from(lineage, loc, s, part, nowait)):
                data = self._read_extent(lineage, s, e, loc, into=part, nowait=nowait)
                if data is not part:  # not read in place: decoded, or cut from whole frames
                    part[:] = data

    def _fill_spans(self, lineage: tuple[int, ...] | None, offset: int, view: memoryview,
                    spans: dict[int, list[tuple[int, int]]], nowait: bool) -> set[int]:
        """Copy into ``view`` (which covers [offset, offset+len(view))) the pieces of each record
        in ``spans``, read and verified once over the span from its first piece to its last
        (into a scratch buffer, one record after another). The records served; one whose span
        fails verification is not, so that its pieces are read alone: the span also covers
        frames whose data was overwritten since, and damage there must not fail a read of live
        data."""
        served: set[int] = set()
        need = len(view) + 2 * FRAME_SIZE  # room for a span's whole frames, stored as is
        scratch = None
        if need <= SPAN_SCRATCH:
            try:
                scratch = self._spare.pop()  # list operations are atomic under the GIL
            except IndexError:
                pass
        if scratch is None:
            scratch = bytearray(max(need, SPAN_SCRATCH))
        try:
            room = memoryview(scratch)
            for loc, ranges in spans.items():
                a, b = ranges[0][0], ranges[-1][1]
                try:
                    data = self._read_extent(lineage, a, b, loc, nowait=nowait, scratch=room)
                except CorruptData:
                    continue
                for s, e in ranges:
                    view[s - offset : e - offset] = data[s - a : e - a]
                served.add(loc)
        finally:
            if len(scratch) == SPAN_SCRATCH and len(self._spare) < SPARE_SCRATCH:  # a larger one goes
                self._spare.append(scratch)
        return served

    def _prefetch(self, pieces: list, spans: dict) -> None:
        """Start the reads of a request's small records at once: on an aged volume a 1 MiB read
        takes ~95 records of 4 KiB scattered over the journal, and read one after another
        from a cold cache each waits for the disk. A small record's header, table and data
        lie together, from its location on."""
        journal = self.journal
        try:
            for s, e, loc in pieces:
                if e - s <= PREFETCH_MAX and loc not in spans:
                    journal.prefetch(loc_segno(loc), loc_pos(loc), RECORD_HEADER_SIZE + 2 * FRAME_ENTRY_SIZE + e - s)
        except OSError:  # only a hint: the reads themselves say what is wrong
            pass

    def _read_extent(self, lineage: tuple[int, ...] | None, s: int, e: int, loc: int,
                     into: memoryview | None = None, nowait: bool = False,
                     scratch: memoryview | None = None) -> bytes | memoryview:
        """The bytes of [s, e) from the record at ``loc``, which must belong to a volume of
        ``lineage`` (None: any) and cover the range. Where [s, e) is whole frames stored as is,
        they are read into ``into`` (len e - s) and verified there, and ``into`` is returned;
        otherwise, where the frames that hold it are stored as is and fit in ``scratch``, they
        are read there and a view of it is returned (valid until ``scratch`` is reused);
        otherwise new bytes. ``nowait``: WouldBlock unless the header cache and the page cache
        hold everything it needs."""
        segno, pos = loc_segno(loc), loc_pos(loc)
        cached = self._header(loc, nowait)
        h, offs = cached.header, cached.offs
        vid = lineage[-1] if lineage else h.volume
        if (lineage is not None and h.volume not in lineage) or h.rtype not in DATA_RECORDS or not (
            h.offset <= s and e <= h.offset + h.length
        ):
            raise CorruptData(f"misplaced record for {self._where(vid, s, loc)}: it holds volume {h.volume} "
                              f"offset {h.offset}")
        f0, f1, at, stored = frames_of(cached, pos, s, e)
        cut, n = s - h.offset - f0 * FRAME_SIZE, e - s
        if h.sums and f0 == f1 and n <= stored - BLOCK_SIZE and (cached.raw_csums is not None or
                                                              not cached.entry(f0).flags):
            return self._read_blocks(cached, vid, s, e, loc, at - f0 * FRAME_SIZE, stored, into, nowait)
        if nowait:
            raw: bytes | memoryview = self.journal.pread_nowait(segno, at, stored)
        elif into is not None and cached.raw_csums is not None and cut == 0 and n == stored:
            got = self.journal.pread_into(segno, at, into)
            raw = into if got == n else into[:got]  # short: fails the check below
        elif scratch is not None and cached.raw_csums is not None and stored <= len(scratch):
            raw = scratch[: self.journal.pread_into(segno, at, scratch[:stored])]  # short: fails the check below
        else:
            raw = self.journal.pread(segno, at, stored)
        if cached.raw_csums is not None:  # frames stored as is: verify them in one pass
            bad = first_bad_stored_frame(raw, offs, cached.raw_csums, f0, f1)
            if bad is not None:
                raise CorruptData(f"checksum mismatch in frame {bad} of {self._where(vid, s, loc)}")
            return raw if cut == 0 and n == len(raw) else raw[cut : cut + n]
        ad = (h.volume, h.rtype, h.seq, h.offset, segno, pos) if self.codec.encrypted else None
        view = memoryview(raw)
        parts = []
        flags = 0
        try:
            for i in range(f0, f1 + 1):
                entry = cached.entry(i)
                flags |= entry.flags
                body = view[offs[i] - offs[f0] : offs[i + 1] - offs[f0]]
                parts.append(self.codec.decode(entry, body, min(FRAME_SIZE, h.length - i * FRAME_SIZE), ad, i,
                                               f"frame {i}"))
        except CorruptData as err:
            raise CorruptData(f"{err.message} of {self._where(vid, s, loc)}") from None
        if not flags:  # raw frames: the pread result is the data
            return raw if cut == 0 and n == len(raw) else raw[cut : cut + n]
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return data if cut == 0 and n == len(data) and isinstance(data, bytes) else bytes(data[cut : cut + n])

    def _read_blocks(self, cached: CachedRecord, vid: int, s: int, e: int, loc: int, base: int, frame_len: int,
                     into: memoryview | None, nowait: bool) -> bytes | memoryview:
        """[s, e) of a version 3 record, inside one frame stored as is (``frame_len`` bytes), by
        reading and verifying the 4 KiB blocks that hold it against their block sums, not the
        whole frame (a 4 KiB read of a record written in 1 MiB requests read 64 KiB). ``base``:
        the segment position of that frame's data less its offset in the record, so that
        ``base + a`` is where the record's byte ``a`` (in that frame) lies.

        On a local pool the blocks are read only from the page cache: on a miss the whole frame
        is read (its blocks still verified alone) or, with ``nowait``, asked for (WILLNEED), as
        before block sums, so that cold random reads still bring in their neighbours 64 KiB at
        a time. A remote pool reads the blocks alone."""
        h, segno = cached.header, loc_segno(loc)
        b0, b1 = (s - h.offset) // BLOCK_SIZE, (e - 1 - h.offset) // BLOCK_SIZE
        a = b0 * BLOCK_SIZE
        size, cut, n = min((b1 + 1) * BLOCK_SIZE, h.length) - a, s - h.offset - a, e - s
        raw = into if into is not None and cut == 0 and n == size else memoryview(bytearray(size))
        journal = self.journal
        if not journal.pread_cached(segno, base + a, raw):
            frame = base + (a // FRAME_SIZE) * FRAME_SIZE
            if nowait:
                journal.missed(segno, frame, frame_len)  # the whole frame is asked for
            if journal.local_files:
                raw = memoryview(journal.pread(segno, frame, frame_len))[base + a - frame :][:size]
            else:
                raw = raw[: journal.pread_into(segno, base + a, raw)]  # only the blocks
            # short reads fail the check below
        bad = first_bad_block(raw, size, cached.table, h.nframes, b0)
        if bad is not None:
            raise CorruptData(f"checksum mismatch in block {bad} of {self._where(vid, s, loc)}")
        if raw is into:
            return raw
        return bytes(raw) if cut == 0 and n == size else bytes(raw[cut : cut + n])  # bytes, as reads of frames return

    def _where(self, vid: int, s: int, loc: int) -> str:
        return f"volume {vid} chunk {s // self.sb.chunk_size} (segment {loc_segno(loc)} record {loc_pos(loc)})"


def _shared_spans(pieces: list) -> dict[int, list[tuple[int, int]]]:
    """{loc: [(start, end) of each piece, in order]} for each record that two or more of
    ``pieces`` come from (empty when none does: the common case costs one set)."""
    if len(pieces) < 2 or len({p[2] for p in pieces}) == len(pieces):
        return {}
    ranges: dict[int, list[tuple[int, int]]] = {}
    for s, e, loc in pieces:
        got = ranges.get(loc)
        if got is None:
            ranges[loc] = [(s, e)]
        else:
            got.append((s, e))
    return {loc: r for loc, r in ranges.items() if len(r) > 1}


def _zero(view: memoryview) -> None:
    for at in range(0, len(view), len(_ZEROS)):
        n = min(len(_ZEROS), len(view) - at)
        view[at : at + n] = _ZEROS[:n]
