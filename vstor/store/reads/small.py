"""The fast path of small reads: a 4 KiB read, most of what databases, fio and file systems
ask of a volume, in half the general path's Python.

A mixin of Store, the base of the read path (path.py), which tries it first for reads of up
to SMALL_READ bytes of a volume (not a snapshot), and for each small piece of a larger read
(an aged volume's 1 MiB read takes ~95 pieces, half of them 4 KiB records). It serves a read that one record holds
whole, a record stored as is (no lz4 gain, no encryption) whose header the header cache holds:
one step of the chunk map (``VolumeMap.covering``), the cached entry read as it is kept
(``HeaderCache.peek``: a packed one-frame entry is not built), one ``preadv`` without waiting
into the caller's buffer, and the record's checksum or block sums. When the page cache lacks
the data, a 4 KiB read that may wait reads the whole frame, as the general path would (larger
ones are left to it), and one that may not asks for it and raises WouldBlock. Anything else
it declines, counting nothing, and the general path serves the read: several pieces, a hole,
a compressed or encrypted record, a remote pool, a header not cached, and data that fails its
checksum or cannot be read, which the general path reads again and reports. So this path
never returns unverified bytes and never decides an error. Each aligned 4 KiB block it serves
is then resolved (resolved.py).

Measured (docs/benchmarks.md section 9): in process, warm 4 KiB reads of an aged 256 MiB
volume 8.4-9.2 against 12.3-15.2 us, of a fresh one 6.7-7.6 against 9.0-10.5 us; through FUSE,
aged random reads 20.9-22.1k against 16.4-18.0k IOPS warm. As the pieces of 1 MiB reads of an
aged 1 GiB volume in process, 924-1,033 against 596-748 MiB/s warm; through FUSE, the aged
volume's first sequential pass 260-302 against 226-263 MB/s.
"""

from __future__ import annotations

from xxhash import xxh3_64_intdigest

from vstor.errors import VstorError
from vstor.store.journal.format import (
    BLOCK_SIZE,
    FRAME_SIZE,
    REC_RELOCATE,
    REC_WRITE,
    RECORD_HEADER_SIZE,
    block_sum,
    loc_pos,
    loc_segno,
)
from vstor.store.journal.hcache import CachedRecord, one_frame
from vstor.store.maps.chunkmap import EMPTY
from vstor.store.reads.resolved import ResolvedReadMixin, place

__all__ = ["DATA_RECORDS", "SMALL_READ", "SmallReadMixin", "first_bad_block", "frames_of"]

SMALL_READ = FRAME_SIZE  # reads up to this size try the fast path first
DATA_RECORDS = (REC_WRITE, REC_RELOCATE)  # the record types a volume's data is read from (both paths)


SERVED = 1  # _small_from's answer for a read served whose place is not worth resolving (0: not served)


class SmallReadMixin(ResolvedReadMixin):
    def _read_small(self, vid: int, offset: int, view: memoryview, nowait: bool) -> bool:
        """The fast path of a small read (a 4 KiB random read: most of what databases and fio
        ask): [offset, offset+len(view)) of volume ``vid`` into ``view``, verified, when one
        record stored as is holds all of it and its header is cached. Then it costs half the
        general path's Python (7 against 14 us in process, docs/benchmarks.md section 9).
        False, with nothing counted, in every other case, and when the data fails its checksum:
        the general path then reads it again and reports what is wrong, so that this path
        never decides an error. A page-cache miss reads the frame, waiting, or with ``nowait``
        raises WouldBlock after asking for it, as the general path does. An aligned 4 KiB
        block is tried resolved first, and recorded as resolved once served (resolved.py)."""
        n = len(view)
        end = offset + n
        block = -1
        if n == BLOCK_SIZE and not offset % BLOCK_SIZE:
            block = offset // BLOCK_SIZE
            if self._read_resolved(vid, block, view):
                self.stats.request("read", n)
                return True
        with self._lock:
            vol = self.state.table.by_id_or_none(vid)
            if vol is None or end > vol.size:
                return False
            vm = self.state.maps[vid]
            loc = vm.covering(offset, end)
            if loc == EMPTY:  # a hole, the edge of a piece or of a chunk
                return False
            lineage, changes = vm.lineage, vm.changes
            self._active_reads += 1
        try:
            got = self._small_from(lineage, loc, offset, view, nowait)
        finally:
            self.done_reading()
        if not got:
            return False
        if got != SERVED and block >= 0:
            self._record_resolved(vm, block, got, changes)
        self.stats.request("read", n)
        return True

    def _small_from(self, lineage: tuple[int, ...], loc: int, offset: int, view: memoryview, nowait: bool) -> int:
        """:meth:`_read_small` from the record at ``loc``: its checks of the record are
        :meth:`_read_extent`'s (the record belongs to the volume, holds data, covers the
        range), its verification :meth:`_read_blocks`' and ``first_bad_stored_frame``'s.
        0: not served; else served, and for one whole block with a checksum of its own, its
        :func:`~vstor.store.reads.resolved.place` (SERVED otherwise)."""
        journal = self.journal
        entry = self._hcache.peek(loc) if journal.local_files else None
        if entry is None:
            return 0
        if isinstance(entry, bytes):  # a record of one frame, kept packed: its fields alone
            fields = one_frame(entry)
            if fields is None:  # several frames (or none): built once, as the general path's first read does
                return self._small_built(self._hcache.get(loc), lineage, loc, offset, view, nowait)
            rtype, volume, roff, length, csum, sums, as_is = fields
            segno, n = loc_segno(loc), len(view)
            frame_at = loc_pos(loc) + len(entry)  # the header and the table as read or written, then the data
            if not (as_is and volume in lineage and rtype in DATA_RECORDS and roff <= offset <= roff + length - n):
                return 0
            if not sums:  # its one checksum covers the whole frame
                if n == length:
                    if not self._small_fill(nowait, segno, frame_at, view, frame_at, length):
                        return 0
                    if xxh3_64_intdigest(view) != csum:
                        return 0
                    return place(segno, frame_at, csum) if n == BLOCK_SIZE else SERVED
                frame = memoryview(bytearray(length))
                if not self._small_fill(nowait, segno, frame_at, frame, frame_at, length):
                    return 0
                if xxh3_64_intdigest(frame) != csum:
                    return 0
                view[:] = frame[offset - roff : offset - roff + n]
                return SERVED
            return self._small_blocks(memoryview(entry)[RECORD_HEADER_SIZE:], 1, roff, length, segno, frame_at,
                                      frame_at, length, offset, view, nowait)
        return self._small_built(entry, lineage, loc, offset, view, nowait)

    def _small_built(self, rec: CachedRecord | None, lineage: tuple[int, ...], loc: int, offset: int,
                     view: memoryview, nowait: bool) -> int:
        """:meth:`_small_from` for a built entry: a record of several frames, all stored as is,
        with block sums (version 3: every write over 4 KiB), read in whole blocks of one frame."""
        if rec is None:
            return 0
        h = rec.header
        if not h.sums or rec.raw_csums is None or h.volume not in lineage or h.rtype not in DATA_RECORDS:
            return 0
        n, roff, length = len(view), h.offset, h.length
        if not roff <= offset <= roff + length - n:
            return 0
        f0, f1, frame_at, frame_len = frames_of(rec, loc_pos(loc), offset, offset + n)
        if f0 != f1:
            return 0
        base = frame_at - f0 * FRAME_SIZE  # where the record's byte 0 would lie, for this frame
        return self._small_blocks(rec.table, h.nframes, roff, length, loc_segno(loc), base, frame_at,
                                  frame_len, offset, view, nowait)

    def _small_blocks(self, table: bytes | memoryview, nframes: int, roff: int, length: int, segno: int,
                      base: int, frame_at: int, frame_len: int, offset: int, view: memoryview, nowait: bool) -> int:
        """Whole blocks of one frame stored as is of a version 3 record (``table``: its frame
        table and block sums; ``base``: the segment position of the record's byte 0, for the
        frame at ``frame_at``), read into ``view`` and each verified against its block sum."""
        n, a = len(view), offset - roff
        if a % BLOCK_SIZE or (n % BLOCK_SIZE and a + n != length):
            return 0
        if not self._small_fill(nowait, segno, base + a, view, frame_at, frame_len):
            return 0
        if first_bad_block(view, n, table, nframes, a // BLOCK_SIZE) is not None:
            return 0
        if n == BLOCK_SIZE:
            return place(segno, base + a, block_sum(table, nframes, a // BLOCK_SIZE))
        return SERVED

    def _small_fill(self, nowait: bool, segno: int, at: int, view: memoryview, frame_at: int,
                    frame_len: int) -> bool:
        """Fill ``view`` with [at, at+len(view)) of segment ``segno``, which lies in the frame
        [frame_at, frame_at+frame_len), from the page cache. On a miss, with ``nowait`` the
        frame is asked for and WouldBlock raised; without, a read of one 4 KiB block reads the
        whole frame, waiting, as the general path reads it on the same miss (so that cold random
        reads still bring their neighbours in 64 KiB at a time), and is served here, and
        resolved. False when it cannot be read, or is larger and missed: the general path then
        reads it (again) and reports what is wrong."""
        journal = self.journal
        if journal.pread_cached(segno, at, view):
            return True
        if nowait:
            journal.missed(segno, frame_at, frame_len)
        if len(view) != BLOCK_SIZE:  # not resolved: the general path reads it, into the caller's buffer
            return False  # when whole frames (mixed 64 KiB reads: 11 us more user CPU a request here)
        try:
            frame = journal.pread(segno, frame_at, frame_len)
        except (VstorError, OSError):
            return False
        part = frame[at - frame_at : at - frame_at + len(view)]
        if len(part) != len(view):
            return False
        view[:] = part
        return True


def frames_of(cached: CachedRecord, pos: int, s: int, e: int) -> tuple[int, int, int, int]:
    """(first frame, last frame, position in the segment, stored bytes) of the frames that
    hold [s, e) of the record at ``pos`` whose header and offsets are ``cached``."""
    h, offs = cached.header, cached.offs
    f0, f1 = (s - h.offset) // FRAME_SIZE, (e - 1 - h.offset) // FRAME_SIZE
    return f0, f1, pos + RECORD_HEADER_SIZE + h.table_size + offs[f0], offs[f1 + 1] - offs[f0]


def first_bad_block(raw: bytes | memoryview, size: int, table: bytes | memoryview, nframes: int,
                    b0: int) -> int | None:
    """The first of the blocks b0, b0+1, ... of a version 3 record whose ``size`` bytes should
    be ``raw`` that is short or fails its block sum (``table``: the record's frame table and
    block sums), or None: the check of both read paths."""
    for k in range(0, size, BLOCK_SIZE):
        block = raw[k : k + BLOCK_SIZE]
        if len(block) != min(BLOCK_SIZE, size - k) or xxh3_64_intdigest(block) != block_sum(
                table, nframes, b0 + k // BLOCK_SIZE):
            return b0 + k // BLOCK_SIZE
    return None
