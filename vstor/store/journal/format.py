"""On-disk formats of journal segments and records. Pure: no I/O.

The authoritative description is docs/formats.md; keep the two in step. All integers are
little-endian. Checksums are xxh3-64 (xxhash), chosen for speed: 20 us per MiB here,
against 44 us for crc32c and 380 us for zlib.crc32.

Segment file ``journal/SEGNO.seg`` (SEGNO: 10 decimal digits)::

    segment header (64 bytes)  then records back to back, no padding

Record::

    header (64 bytes) | frame table (nframes * 32 bytes) | frame data (sum of stored lengths)

A record describes one contiguous byte range of one volume. Its payload is cut into
frames of FRAME_SIZE logical bytes (the last may be shorter); each frame is stored raw,
lz4-compressed and/or AES-256-GCM-encrypted, or not at all when it is all zeros, and
carries its own checksum, so a small read verifies only the frames it touches.

Records of version 2 (RECORD_VERSION, written since 2026-12-05) seed their header checksum
with the number of the segment they are in, so a record is valid only where it was written:
a segment file reused for a later segment (SEG_REUSED) still holds its earlier records after
the new tail, and those fail the new segment's checksums. Version 1 records (unseeded) are
still read, in segments without SEG_SEEDED.

Records of version 3 (SUMS_VERSION) are version 2 with block sums after the frame table: an
xxh3-64 of each BLOCK_SIZE (4 KiB) of the record's logical bytes that lie in a frame stored as
is, 0 for the others. A read of a few KiB inside a large record then reads and verifies those
blocks only, instead of the whole 64 KiB frame. The writer uses version 3 for records with a
frame stored as is that is longer than one block; the sums are inside the header checksum.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import xxhash

FORMAT_VERSION = 1  # segment headers; records before 2026-12-05
RECORD_VERSION = 2  # records written now: header checksum seeded with the segment number
SUMS_VERSION = 3  # version 2 with block sums after the frame table (RecordHeader.sums)
FRAME_SIZE = 64 * 1024
BLOCK_SIZE = 4096  # the unit of a record's block sums
BLOCK_SUM = struct.Struct("<Q")  # one block sum: xxh3-64 of the block's bytes, or 0
MAX_RECORD = 4 * 1024 * 1024  # logical bytes in one record; larger writes are split

SEGMENT_MAGIC = b"VSTSEG01"
SEGMENT_HEADER = struct.Struct("<8sHH16sQQ16x")  # magic ver flags pool_uuid segno created_ns pad
SEGMENT_HEADER_CSUM = struct.Struct("<Q")  # xxh3 of the 56 bytes above, stored at offset 56
SEGMENT_HEADER_SIZE = 64
SEGMENT_FLAGS = struct.Struct("<H")  # at offset 10
# Segment flag: this segment was started when the journal resumed after its backend failed (a
# RADOS cluster that did not answer or was full), and the u64 at SEAL_OFFSET is where the
# segment before it ends: bytes past that were never acknowledged and are never read, even
# if a write that timed out on the client reached the OSD later (docs/architecture.md).
SEG_SEALS_PREV = 1
SEGMENT_SEAL = struct.Struct("<Q")
SEAL_OFFSET = 44  # in the header's zero bytes, inside its checksum
# Segment flag: every record in this segment is of version 2 or 3 (checksum seeded with the segment
# number), so once the segment is dead its file may be reused for a later segment.
SEG_SEEDED = 2
# Segment flag: this file held an earlier (seeded) segment; bytes after the last record may be
# that segment's records, which fail this segment's checksums, and end a scan cleanly.
SEG_REUSED = 4

RECORD_MAGIC = b"VREC"
# magic ver type nframes group volume seq offset length stored tstamp hcsum reserved
RECORD_HEADER = struct.Struct("<4sBBHIIQQIIQQ8x")
RECORD_HEADER_SIZE = 64
HCSUM_OFFSET = 48  # the header checksum covers header[0:48] + the frame table
# RECORD_HEADER cut at the checksum, for packing: the head's fields, then the checksum and pad.
_HEADER_HEAD = struct.Struct("<4sBBHIIQQIIQ")
_HEADER_TAIL = struct.Struct("<Q8x")
_RESERVED = bytes(RECORD_HEADER_SIZE - HCSUM_OFFSET - 8)
assert _HEADER_HEAD.size == HCSUM_OFFSET and _HEADER_HEAD.size + _HEADER_TAIL.size == RECORD_HEADER_SIZE

FRAME_ENTRY = struct.Struct("<IHHQ12s4x")  # stored_len flags reserved csum nonce pad
FRAME_ENTRY_SIZE = 32

# Record types.
REC_WRITE = 1  # host data; consumes one group sequence number
REC_TRIM = 2  # range reads as zeros afterwards (discard, all-zero write, shrink); consumes a seq
REC_RELOCATE = 3  # GC/compaction copy of live data; seq 0, invisible to journal readers
REC_VOLUME = 4  # volume table event, JSON payload in one raw frame; seq 0
REC_COMMIT = 5  # durability marker: offset = a position in this segment that an fdatasync made
                # durable before the marker was written; no payload. Lets recovery tell a torn
                # tail (nothing durable after it) from damage inside durable data.
REC_PAD = 6  # zeros up to an aligned position after a large record on a backend that wants
             # aligned appends (RADOS: BlueStore reads and rewrites a partly written block);
             # stored = the zero bytes after the header, at most MAX_PAD_STORED; skipped by readers
MAX_PAD_STORED = 8192

RECORD_TYPES = {REC_WRITE: "write", REC_TRIM: "trim", REC_RELOCATE: "relocate", REC_VOLUME: "volume",
                REC_COMMIT: "commit", REC_PAD: "pad"}

# Frame flags.
FF_LZ4 = 1
FF_AES = 2
FF_ZERO = 4  # all-zero frame: nothing stored


class RecordHeader(NamedTuple):
    """A record header's fields, in RECORD_HEADER's order after magic and version:
    pack_record_header packs the tuple as it is. A named tuple, because one is built for
    every record and a frozen dataclass costs twice as much to build."""

    rtype: int
    nframes: int
    group: int
    volume: int
    seq: int
    offset: int
    length: int
    stored: int  # bytes after the 64-byte header: frame table (with block sums) + frame data
    tstamp: int  # nanoseconds since the epoch
    sums: bool = False  # block sums follow the frame table (version 3); not a packed field

    @property
    def total_size(self) -> int:
        return RECORD_HEADER_SIZE + self.stored

    @property
    def table_size(self) -> int:
        """Bytes between the header and the frame data: the frame table, then the block sums."""
        if self.sums:
            return self.nframes * FRAME_ENTRY_SIZE + block_count(self.length) * BLOCK_SUM.size
        return self.nframes * FRAME_ENTRY_SIZE


class FrameEntry(NamedTuple):
    stored_len: int
    flags: int
    csum: int
    nonce: bytes


def frame_count(length: int) -> int:
    return (length + FRAME_SIZE - 1) // FRAME_SIZE


def block_count(length: int) -> int:
    return (length + BLOCK_SIZE - 1) // BLOCK_SIZE


def record_bound(length: int) -> int:
    """The most bytes a record of ``length`` logical bytes takes: header, frame table and block
    sums, and frames (lz4 is kept only when smaller; AES adds a 16-byte tag per frame)."""
    table = frame_count(length) * (FRAME_ENTRY_SIZE + 16) + block_count(length) * BLOCK_SUM.size
    return RECORD_HEADER_SIZE + table + length


def block_sums(entries: list[FrameEntry], bodies: list, length: int) -> bytes:
    """The block sums of a record of ``length`` bytes encoded as ``entries`` and ``bodies`` (the
    stored bytes of its non-zero frames, in order): b"" when no frame stored as is is longer
    than one block, so the record is written as version 2 without them."""
    for e in entries:  # a loop, not any() over a generator: this runs for every host write
        if e.flags == 0 and e.stored_len > BLOCK_SIZE:
            break
    else:
        return b""
    sums: list[int] = []
    digest = xxhash.xxh3_64_intdigest
    at = 0  # index into bodies
    for i, e in enumerate(entries):
        n = min(FRAME_SIZE, length - i * FRAME_SIZE)
        if e.flags == 0:
            body = memoryview(bodies[at])
            sums += [digest(body[k : k + BLOCK_SIZE]) for k in range(0, n, BLOCK_SIZE)]
        else:
            sums += [0] * block_count(n)
        if not e.flags & FF_ZERO:
            at += 1
    return struct.pack(f"<{len(sums)}Q", *sums)


def frame_bodies(frames: tuple[FrameEntry, ...], payload: bytes | memoryview) -> list[memoryview]:
    """Each frame's stored bytes in a record's frame data, by the table's stored lengths (views;
    a cut payload gives short or empty ones at the end, which the caller's checks refuse)."""
    view, off, out = memoryview(payload), 0, []
    for fe in frames:
        out.append(view[off : off + fe.stored_len])
        off += fe.stored_len
    return out


def block_sums_match(header: RecordHeader, sums: bytes, frames: tuple[FrameEntry, ...], payload: bytes) -> bool:
    """Whether a version 3 record's stored block ``sums`` are those of its frames (``payload``:
    the frame data, whose frame checksums passed). A mismatch is a writer's bug, not bit rot:
    the sums are inside the header checksum."""
    bodies = [b for fe, b in zip(frames, frame_bodies(frames, payload), strict=True) if not fe.flags & FF_ZERO]
    return block_sums(list(frames), bodies, header.length) == sums


def block_sum(table: bytes | memoryview, nframes: int, block: int) -> int:
    """Block ``block``'s sum from a version 3 record's table (frame table + block sums)."""
    return int(BLOCK_SUM.unpack_from(table, nframes * FRAME_ENTRY_SIZE + block * BLOCK_SUM.size)[0])


def pack_record_header(h: RecordHeader, table: bytes, segno: int | None) -> bytes:
    """The 64 header bytes of a record that goes into segment ``segno``: version 2, or 3 when
    ``h.sums`` (``table`` then ends with the block sums), its checksum seeded with ``segno``.
    ``segno`` None packs version 1 (unseeded), as builds before 2026-12-05 wrote; only tests of
    reading such pools use it."""
    if segno is None:
        if h.sums:
            raise ValueError("version 1 records have no block sums")
        head = _HEADER_HEAD.pack(RECORD_MAGIC, FORMAT_VERSION, *h[:9])
        return head + _HEADER_TAIL.pack(xxhash.xxh3_64_intdigest(head + table))
    head = _HEADER_HEAD.pack(RECORD_MAGIC, SUMS_VERSION if h.sums else RECORD_VERSION, *h[:9])
    return head + _HEADER_TAIL.pack(xxhash.xxh3_64_intdigest(head + table, segno))


def pack_padding(size: int, tstamp: int, segno: int | None) -> bytes:
    """A REC_PAD record of exactly ``size`` bytes (RECORD_HEADER_SIZE .. + MAX_PAD_STORED)."""
    stored = size - RECORD_HEADER_SIZE
    if not 0 <= stored <= MAX_PAD_STORED:
        raise ValueError(f"bad padding size {size}")
    return pack_record_header(RecordHeader(REC_PAD, 0, 0, 0, 0, 0, 0, stored, tstamp), b"", segno) + bytes(stored)


def padding_after(end: int, align: int) -> int:
    """Bytes of a REC_PAD record that brings ``end`` to a multiple of ``align`` (0: already there)."""
    pad = -end % align
    return pad + align if 0 < pad < RECORD_HEADER_SIZE else pad


class BadRecord(ValueError):
    """The bytes at a position do not hold a valid record (torn, foreign or corrupt)."""


def unpack_record_header(raw: bytes | memoryview) -> tuple[RecordHeader, int]:
    """Parse the 64 header bytes. Returns the header and its stored checksum.

    Checks magic, version and bounds; the checksum needs the frame table too and is
    verified by :func:`verify_header`.
    """
    if len(raw) < RECORD_HEADER_SIZE:
        raise BadRecord("short header")
    magic, ver, rtype, nframes, group, volume, seq, offset, length, stored, tstamp, hcsum = (
        RECORD_HEADER.unpack_from(raw)
    )
    if magic != RECORD_MAGIC:
        raise BadRecord("bad record magic")
    if ver != RECORD_VERSION and ver != SUMS_VERSION and ver != FORMAT_VERSION:
        raise BadRecord(f"unsupported record version {ver}")
    if raw[HCSUM_OFFSET + 8 : RECORD_HEADER_SIZE] != _RESERVED:  # outside the checksum: must be zero
        raise BadRecord("record header reserved bytes are not zero")
    if rtype not in RECORD_TYPES:
        raise BadRecord(f"unknown record type {rtype}")
    if length > MAX_RECORD or nframes != (frame_count(length) if rtype not in (REC_TRIM, REC_COMMIT, REC_PAD) else 0):
        raise BadRecord("inconsistent record length")
    if ver == SUMS_VERSION and not nframes:
        raise BadRecord("block sums in a record without frames")
    if rtype == REC_PAD and (length or stored > MAX_PAD_STORED):
        raise BadRecord("inconsistent padding record")
    header = RecordHeader(rtype, nframes, group, volume, seq, offset, length, stored, tstamp, ver == SUMS_VERSION)
    table = header.table_size
    if rtype != REC_PAD and (stored < table or stored > table + nframes * (FRAME_SIZE + 64)):
        raise BadRecord("inconsistent stored size")
    return header, hcsum


def trusted_record_header(raw: bytes) -> RecordHeader:
    """The header in the first 64 bytes of ``raw``, which this process packed itself (the header
    cache's packed entries): no checks, at a third of :func:`unpack_record_header`'s cost."""
    _m, ver, rtype, nframes, group, volume, seq, offset, length, stored, tstamp, _c = RECORD_HEADER.unpack_from(raw)
    return RecordHeader(rtype, nframes, group, volume, seq, offset, length, stored, tstamp, ver == SUMS_VERSION)


def verify_header(raw: bytes | memoryview, table: bytes | memoryview, hcsum: int, segno: int) -> None:
    """Check the header checksum of a record read from segment ``segno`` (a version 2 or 3
    record written into another segment, such as an earlier use of a reused file, fails)."""
    seed = segno if raw[4] != FORMAT_VERSION else 0
    if xxhash.xxh3_64_intdigest(bytes(raw[:HCSUM_OFFSET]) + bytes(table), seed) != hcsum:
        raise BadRecord("record header checksum mismatch")


def pack_frame_table(entries: list[FrameEntry]) -> bytes:
    return b"".join([FRAME_ENTRY.pack(e.stored_len, e.flags, 0, e.csum, e.nonce) for e in entries])


def unpack_frame_table(table: bytes | memoryview, nframes: int) -> tuple[FrameEntry, ...]:
    out = []
    for i in range(nframes):
        stored_len, flags, _res, csum, nonce = FRAME_ENTRY.unpack_from(table, i * FRAME_ENTRY_SIZE)
        out.append(FrameEntry(stored_len, flags, csum, nonce))
    return tuple(out)


def pack_segment_header(pool_uuid: bytes, segno: int, created_ns: int, seals_prev: int | None = None,
                        seeded: bool = True) -> bytes:
    """``seals_prev``: the segment before this one ends at that position (see SEG_SEALS_PREV).
    ``seeded``: the segment will hold version 2 or 3 records only (SEG_SEEDED; every new segment)."""
    flags = (SEG_SEALS_PREV if seals_prev is not None else 0) | (SEG_SEEDED if seeded else 0)
    raw = bytearray(SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, flags, pool_uuid, segno, created_ns))
    if seals_prev is not None:
        SEGMENT_SEAL.pack_into(raw, SEAL_OFFSET, seals_prev)
    return _seal_header(raw)


def _seal_header(raw: bytearray) -> bytes:
    return bytes(raw[:56]) + SEGMENT_HEADER_CSUM.pack(xxhash.xxh3_64_intdigest(bytes(raw[:56])))


def seeded_segment(raw: bytes) -> bool:
    """Whether ``raw`` starts with an intact segment header (magic, checksum) that says
    SEG_SEEDED: every record after it is of version 2 or 3 (its file may be reused)."""
    if len(raw) < SEGMENT_HEADER_SIZE or raw[:8] != SEGMENT_MAGIC:
        return False
    (csum,) = SEGMENT_HEADER_CSUM.unpack_from(raw, 56)
    return csum == xxhash.xxh3_64_intdigest(raw[:56]) and bool(segment_flags(raw) & SEG_SEEDED)


def segment_flags(raw: bytes) -> int:
    """The flags of a segment header (check it with :func:`unpack_segment_header` first)."""
    return int(SEGMENT_FLAGS.unpack_from(raw, 10)[0])


def mark_reused(raw: bytes) -> bytes:
    """The segment header ``raw`` with SEG_REUSED set: its file held an earlier segment."""
    out = bytearray(raw[:SEGMENT_HEADER_SIZE])
    SEGMENT_FLAGS.pack_into(out, 10, segment_flags(raw) | SEG_REUSED)
    return _seal_header(out)


def segment_seal(raw: bytes) -> int | None:
    """Where a valid segment header (checked by :func:`unpack_segment_header`) says the segment
    before it ends, or None when it does not seal its predecessor."""
    (flags,) = SEGMENT_FLAGS.unpack_from(raw, 10)
    return SEGMENT_SEAL.unpack_from(raw, SEAL_OFFSET)[0] if flags & SEG_SEALS_PREV else None


def unpack_segment_header(raw: bytes, pool_uuid: bytes, segno: int) -> None:
    """Validate a segment header against the pool and the file's number."""
    if len(raw) < SEGMENT_HEADER_SIZE:
        raise BadRecord("short segment header")
    magic, ver, _flags, uuid, seg, _created = SEGMENT_HEADER.unpack_from(raw)
    (csum,) = SEGMENT_HEADER_CSUM.unpack_from(raw, 56)
    if magic != SEGMENT_MAGIC or csum != xxhash.xxh3_64_intdigest(raw[:56]):
        raise BadRecord("bad segment header")
    if ver != FORMAT_VERSION:
        raise BadRecord(f"unsupported segment version {ver}")
    if uuid != pool_uuid:
        raise BadRecord("segment belongs to another pool")
    if seg != segno:
        raise BadRecord(f"segment header says {seg}, file name says {segno}")


# A location packs (segment number, byte position of the record header) into one int,
# so maps hold a single machine word per chunk. Segments are limited to 4 GiB.
LOC_SHIFT = 32
MAX_SEGMENT_SIZE = 1 << LOC_SHIFT


def make_loc(segno: int, pos: int) -> int:
    return (segno << LOC_SHIFT) | pos


def loc_segno(loc: int) -> int:
    return loc >> LOC_SHIFT


def loc_pos(loc: int) -> int:
    return loc & (MAX_SEGMENT_SIZE - 1)


def segment_name(segno: int) -> str:
    return f"{segno:010d}.seg"
