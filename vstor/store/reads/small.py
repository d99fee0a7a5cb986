"""The fast path of small reads: a 4 KiB read, most of what databases, fio and file systems
ask of a volume, in half the general path's Python.

A mixin of Store, the base of the read path (path.py), which tries it first for reads of up
to SMALL_READ bytes of a volume (not a snapshot), and for each small piece of a larger read
(an aged volume's 1 MiB read takes ~95 pieces, half of them 4 KiB records). It serves a read that one record holds
whole, a record stored as is (no lz4 gain, no encryption) whose header the header cache holds
and whose data the page cache holds: one step of the chunk map (``VolumeMap.covering``), the
cached entry read as it is kept (``HeaderCache.peek``: a packed one-frame entry is not built),
one ``preadv`` without waiting into the caller's buffer, and the record's checksum or block
sums. Anything else it declines, counting nothing, and the general path serves the read:
several pieces, a hole, a compressed or encrypted record, a remote pool, a header not cached,
and data that fails its checksum, which the general path reads again and reports. So this
path never returns unverified bytes and never decides an error.

Measured (docs/benchmarks.md section 9): in process, warm 4 KiB reads of an aged 256 MiB
volume 8.4-9.2 against 12.3-15.2 us, of a fresh one 6.7-7.6 against 9.0-10.5 us; through FUSE,
aged random reads 20.9-22.1k against 16.4-18.0k IOPS warm. As the pieces of 1 MiB reads of an
aged 1 GiB volume in process, 924-1,033 against 596-748 MiB/s warm; through FUSE, the aged
volume's first sequential pass 260-302 against 226-263 MB/s.
"""

from __future__ import annotations

from xxhash import xxh3_64_intdigest

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
from vstor.store.storeparts import StoreParts

__all__ = ["DATA_RECORDS", "SMALL_READ", "SmallReadMixin", "first_bad_block", "frames_of"]

SMALL_READ = FRAME_SIZE  # reads up to this size try the fast path first
DATA_RECORDS = (REC_WRITE, REC_RELOCATE)  # the record types a volume's data is read from (both paths)


class SmallReadMixin(StoreParts):
    def _read_small(self, vid: int, offset: int, view: memoryview, nowait: bool) -> bool:
        """The fast path of a small read (a 4 KiB random read: most of what databases and fio
        ask): [offset, offset+len(view)) of volume ``vid`` into ``view``, verified, when one
        record stored as is holds all of it, its header is cached and the page cache holds its
        data. Then it costs half the general path's Python (7 against 14 us in process,
        docs/benchmarks.md section 9). False, with nothing counted, in every other case, and
        when the data fails its checksum: the general path then reads it again and reports
        what is wrong, so that this path never decides an error. With ``nowait``, a page-cache
        miss raises WouldBlock after asking for the frame, as the general path does."""
        n = len(view)
        end = offset + n
        with self._lock:
            vol = self.state.table.by_id_or_none(vid)
            if vol is None or end > vol.size:
                return False
            vm = self.state.maps[vid]
            loc = vm.covering(offset, end)
            if loc == EMPTY:  # a hole, the edge of a piece or of a chunk
                return False
            lineage = vm.lineage
            self._active_reads += 1
        try:
            ok = self._small_from(lineage, loc, offset, view, nowait)
        finally:
            self.done_reading()
        if ok:
            self.stats.request("read", n)
        return ok

    def _small_from(self, lineage: tuple[int, ...], loc: int, offset: int, view: memoryview, nowait: bool) -> bool:
        """:meth:`_read_small` from the record at ``loc``: its checks of the record are
        :meth:`_read_extent`'s (the record belongs to the volume, holds data, covers the
        range), its verification :meth:`_read_blocks`' and ``first_bad_stored_frame``'s."""
        journal = self.journal
        entry = self._hcache.peek(loc) if journal.local_files else None
        if entry is None:
            return False
        if isinstance(entry, bytes):  # a record of one frame, kept packed: its fields alone
            fields = one_frame(entry)
            if fields is None:  # several frames (or none): built once, as the general path's first read does
                return self._small_built(self._hcache.get(loc), lineage, loc, offset, view, nowait)
            rtype, volume, roff, length, csum, sums, as_is = fields
            segno, n = loc_segno(loc), len(view)
            frame_at = loc_pos(loc) + len(entry)  # the header and the table as read or written, then the data
            if not (as_is and volume in lineage and rtype in DATA_RECORDS and roff <= offset <= roff + length - n):
                return False
            if not sums:  # its one checksum covers the whole frame
                if n == length:
                    if not journal.pread_cached(segno, frame_at, view):
                        return self._small_miss(nowait, segno, frame_at, length)
                    return xxh3_64_intdigest(view) == csum
                frame = memoryview(bytearray(length))
                if not journal.pread_cached(segno, frame_at, frame):
                    return self._small_miss(nowait, segno, frame_at, length)
                if xxh3_64_intdigest(frame) != csum:
                    return False
                view[:] = frame[offset - roff : offset - roff + n]
                return True
            return self._small_blocks(memoryview(entry)[RECORD_HEADER_SIZE:], 1, roff, length, segno, frame_at,
                                      frame_at, length, offset, view, nowait)
        return self._small_built(entry, lineage, loc, offset, view, nowait)

    def _small_built(self, rec: CachedRecord | None, lineage: tuple[int, ...], loc: int, offset: int,
                     view: memoryview, nowait: bool) -> bool:
        """:meth:`_small_from` for a built entry: a record of several frames, all stored as is,
        with block sums (version 3: every write over 4 KiB), read in whole blocks of one frame."""
        if rec is None:
            return False
        h = rec.header
        if not h.sums or rec.raw_csums is None or h.volume not in lineage or h.rtype not in DATA_RECORDS:
            return False
        n, roff, length = len(view), h.offset, h.length
        if not roff <= offset <= roff + length - n:
            return False
        f0, f1, frame_at, frame_len = frames_of(rec, loc_pos(loc), offset, offset + n)
        if f0 != f1:
            return False
        base = frame_at - f0 * FRAME_SIZE  # where the record's byte 0 would lie, for this frame
        return self._small_blocks(rec.table, h.nframes, roff, length, loc_segno(loc), base, frame_at,
                                  frame_len, offset, view, nowait)

    def _small_blocks(self, table: bytes | memoryview, nframes: int, roff: int, length: int, segno: int,
                      base: int, frame_at: int, frame_len: int, offset: int, view: memoryview, nowait: bool) -> bool:
        """Whole blocks of one frame stored as is of a version 3 record (``table``: its frame
        table and block sums; ``base``: the segment position of the record's byte 0, for the
        frame at ``frame_at``), read into ``view`` and each verified against its block sum."""
        n, a = len(view), offset - roff
        if a % BLOCK_SIZE or (n % BLOCK_SIZE and a + n != length):
            return False
        if not self.journal.pread_cached(segno, base + a, view):
            return self._small_miss(nowait, segno, frame_at, frame_len)
        return first_bad_block(view, n, table, nframes, a // BLOCK_SIZE) is None

    def _small_miss(self, nowait: bool, segno: int, frame_at: int, frame_len: int) -> bool:
        """A fast small read's data is not in the page cache: without ``nowait``, False (the
        general path reads it, waiting); with it, the frame is asked for and WouldBlock
        raised, as the general path would after the same miss."""
        if nowait:
            self.journal.missed(segno, frame_at, frame_len)
        return False


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
