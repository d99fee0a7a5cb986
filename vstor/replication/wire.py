"""The replication wire format (protocol version 1). Pure: no sockets.

docs/formats.md "Replication protocol" is the authoritative description; keep the two in step.
A connection is a TLS 1.3 stream of frames::

    header (24 bytes) | payload (length bytes) | checksum (8 bytes: xxh3-64 of header + payload)

The header carries a per-direction frame number that must grow by exactly one, so a lost,
repeated or reordered frame is detected even though TLS already orders the stream. A frame
that fails any check raises :class:`BadFrame`; the receiver then ends the connection and
applies nothing from that frame.

BATCH payloads hold journal records in group sequence order; each record carries its own
xxh3-64 of its data, checked before it is applied (end-to-end: the sender computes it from
the bytes it read out of its journal).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import lz4.frame
import xxhash

from vstor import boundedjson
from vstor.errors import VstorError

PROTOCOL_VERSION = 1
MAGIC = b"VRPL"
HEADER = struct.Struct("<4sBBHIQI")  # magic version type flags length frame_no reserved
HEADER_SIZE = 24
TRAILER = struct.Struct("<Q")
MAX_PAYLOAD = 16 << 20  # larger frames are refused before their payload is read
F_LZ4 = 1  # the payload is one lz4 frame

# Frame types.
HELLO = 1  # client -> server, JSON: who I am, which pair, my generation
WELCOME = 2  # server -> client, JSON: accepted; my state
REFUSE = 3  # either way, JSON {"reason"}: the sender closes after it
BATCH = 4  # primary -> secondary: journal records (binary, below)
ACK = 5  # secondary -> primary, JSON {"applied", "applied_time"}: durable on the secondary
COPY = 6  # primary -> secondary: copy data for COPY/RESYNC (binary, below)
SYNC_BEGIN = 7  # primary -> secondary, JSON: a copy/resync starts (secondary snapshots first)
SYNC_END = 8  # primary -> secondary, JSON {"base_seq"}: copy data complete; records follow
CONTROL = 9  # either way, JSON {"op", ...}: split, delete, takeover, demoted, ...
PING = 10  # primary -> secondary, empty: keepalive; answered with ACK

TYPE_NAMES = {HELLO: "HELLO", WELCOME: "WELCOME", REFUSE: "REFUSE", BATCH: "BATCH", ACK: "ACK", COPY: "COPY",
              SYNC_BEGIN: "SYNC_BEGIN", SYNC_END: "SYNC_END", CONTROL: "CONTROL", PING: "PING"}

# Records in a BATCH: count u32, then per record this header and, for writes, the data.
RECORD = struct.Struct("<QIQIBxxxQQ")  # seq volume offset length kind pad tstamp_ns data_csum
KIND_WRITE, KIND_TRIM = 1, 2
COPY_HEADER = struct.Struct("<IQIIQ")  # volume offset length flags data_csum
COPY_ZERO = 1  # flags: the range reads as zeros at the source; no data follows


class BadFrame(VstorError):
    """A frame or record from the peer failed a check; nothing from it was applied."""


@dataclass(frozen=True)
class Record:
    seq: int
    volume: int  # the primary's volume id; the secondary maps it through the handshake
    offset: int
    length: int
    data: bytes | None  # None: a trim
    tstamp_ns: int


def pack_frame(ftype: int, payload: bytes, frame_no: int, compress: bool = False) -> bytes:
    flags = 0
    if compress and len(payload) > 512:
        packed = lz4.frame.compress(payload, compression_level=0)
        if len(packed) < len(payload):
            payload, flags = packed, F_LZ4
    if len(payload) > MAX_PAYLOAD:
        raise BadFrame(f"frame of {len(payload)} bytes exceeds the protocol's {MAX_PAYLOAD}")
    head = HEADER.pack(MAGIC, PROTOCOL_VERSION, ftype, flags, len(payload), frame_no, 0)
    return b"".join((head, payload, TRAILER.pack(_csum(head, payload))))


def _csum(head: bytes, payload: bytes | memoryview) -> int:
    h = xxhash.xxh3_64(head)  # streaming: no copy of a multi-MiB payload
    h.update(payload)
    return h.intdigest()


def parse_header(head: bytes, expect_no: int) -> tuple[int, int, int]:
    """Check a frame header; returns (type, flags, payload length)."""
    magic, version, ftype, flags, length, frame_no, _ = HEADER.unpack(head)
    if magic != MAGIC:
        raise BadFrame(f"not a vstor replication frame (magic {magic!r})")
    if version != PROTOCOL_VERSION:
        raise BadFrame(f"protocol version {version} is not supported (this array speaks {PROTOCOL_VERSION})")
    if ftype not in TYPE_NAMES:
        raise BadFrame(f"unknown frame type {ftype}")
    why = order_problem(length, MAX_PAYLOAD, frame_no, expect_no)
    if why:
        raise BadFrame(why)
    return ftype, flags, length


def order_problem(length: int, max_payload: int, frame_no: int, expect_no: int) -> str | None:
    """What is wrong with a frame's announced length or number, if anything (frames are numbered
    per connection and direction, so a lost, repeated or reordered frame is seen). Shared with
    the backup clients' frames, which raise their own BadFrame."""
    if length > max_payload:
        return f"oversized frame: {length} bytes announced, at most {max_payload} allowed"
    if frame_no != expect_no:
        return f"frame number {frame_no} where {expect_no} was due (lost or repeated frame)"
    return None


def check_payload(head: bytes, payload: bytes, trailer: bytes, flags: int) -> bytes:
    (csum,) = TRAILER.unpack(trailer)
    if _csum(head, payload) != csum:
        raise BadFrame("frame checksum mismatch (corrupted or tampered in transit)")
    if flags & F_LZ4:
        dec = lz4.frame.LZ4FrameDecompressor()
        try:
            out = dec.decompress(payload, max_length=MAX_PAYLOAD + 1)
        except RuntimeError as e:
            raise BadFrame(f"frame payload does not decompress: {e}") from None
        if not dec.eof and len(out) <= MAX_PAYLOAD:
            raise BadFrame("frame payload does not decompress: the lz4 frame is truncated")
        if len(out) > MAX_PAYLOAD:
            raise BadFrame(f"frame payload decompresses to more than {MAX_PAYLOAD} bytes")
        return out
    return payload


def pack_json(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


def parse_json(payload: bytes) -> dict:
    try:
        obj = boundedjson.loads(payload)
    except ValueError as e:  # TooDeep included
        raise BadFrame(f"malformed JSON frame: {e}") from None
    if not isinstance(obj, dict):
        raise BadFrame("malformed JSON frame: not an object")
    return obj


def pack_batch(records: list[Record]) -> bytes:
    parts = [struct.pack("<I", len(records))]
    for r in records:
        data = r.data or b""
        kind = KIND_TRIM if r.data is None else KIND_WRITE
        parts.append(RECORD.pack(r.seq, r.volume, r.offset, r.length, kind, r.tstamp_ns,
                                 xxhash.xxh3_64_intdigest(data)))
        parts.append(data)
    return b"".join(parts)


def unpack_batch(payload: bytes) -> list[Record]:
    """Decode and verify every record of a batch; any fault rejects the whole batch."""
    view = memoryview(payload)
    if len(view) < 4:
        raise BadFrame("truncated batch")
    (count,) = struct.unpack_from("<I", view)
    pos, out = 4, []
    for _ in range(count):
        if pos + RECORD.size > len(view):
            raise BadFrame("truncated batch record header")
        seq, vol, off, length, kind, ts, csum = RECORD.unpack_from(view, pos)
        pos += RECORD.size
        if kind == KIND_WRITE:
            data = bytes(view[pos : pos + length])
            if len(data) != length:
                raise BadFrame("truncated batch record data")
            pos += length
        elif kind == KIND_TRIM:
            data = b""
        else:
            raise BadFrame(f"unknown record kind {kind}")
        if xxhash.xxh3_64_intdigest(data) != csum:
            raise BadFrame(f"record seq {seq} fails its checksum (corrupted in transit)")
        out.append(Record(seq, vol, off, length, data if kind == KIND_WRITE else None, ts))
    if pos != len(view):
        raise BadFrame("trailing bytes after the batch's records")
    return out


def pack_copy(volume: int, offset: int, data: bytes) -> bytes:
    return COPY_HEADER.pack(volume, offset, len(data), 0, xxhash.xxh3_64_intdigest(data)) + data


def pack_copy_zero(volume: int, offset: int, length: int) -> bytes:
    """A copy range that reads as zeros at the source: the target trims it, no data is sent."""
    return COPY_HEADER.pack(volume, offset, length, COPY_ZERO, 0)


def unpack_copy(payload: bytes) -> tuple[int, int, int, bytes | None]:
    """(volume, offset, length, data); data None: a zero range."""
    if len(payload) < COPY_HEADER.size:
        raise BadFrame("truncated copy frame")
    vol, off, length, flags, csum = COPY_HEADER.unpack_from(payload)
    data = payload[COPY_HEADER.size :]
    if flags & COPY_ZERO:
        if data:
            raise BadFrame("a zero copy range carries data")
        return vol, off, length, None
    if len(data) != length:
        raise BadFrame("copy frame length does not match its data")
    if xxhash.xxh3_64_intdigest(data) != csum:
        raise BadFrame(f"copy data at volume {vol} offset {off} fails its checksum")
    return vol, off, length, data
