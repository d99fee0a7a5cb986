"""Record/segment formats (vstor.store.journal.format) and the frame codec (vstor.store.codec)."""

from __future__ import annotations

import itertools
import os
import random
import struct
import uuid

import lz4.block
import pytest
import xxhash

from vstor.errors import CorruptData
from vstor.store.codec import FrameCodec, first_bad_stored_frame
from vstor.store.journal.format import (
    FF_AES,
    FF_LZ4,
    FF_ZERO,
    FORMAT_VERSION,
    FRAME_ENTRY_SIZE,
    FRAME_SIZE,
    MAX_RECORD,
    REC_RELOCATE,
    REC_TRIM,
    REC_VOLUME,
    REC_WRITE,
    RECORD_HEADER_SIZE,
    RECORD_VERSION,
    SEGMENT_HEADER_SIZE,
    BadRecord,
    FrameEntry,
    RecordHeader,
    frame_count,
    loc_pos,
    loc_segno,
    make_loc,
    pack_frame_table,
    pack_record_header,
    pack_segment_header,
    segment_name,
    unpack_frame_table,
    unpack_record_header,
    unpack_segment_header,
    verify_header,
)

POOL_UUID = uuid.UUID("12345678-1234-5678-1234-567812345678").bytes


# -- record headers --------------------------------------------------------------------------

def _entries(n: int, rng: random.Random) -> list[FrameEntry]:
    return [FrameEntry(rng.randrange(1, FRAME_SIZE), rng.choice([0, FF_LZ4, FF_AES, FF_LZ4 | FF_AES]),
                       rng.getrandbits(64), rng.randbytes(12)) for _ in range(n)]


def _header(length: int = 3 * FRAME_SIZE + 17, rtype: int = REC_WRITE, **kw: int) -> RecordHeader:
    nframes = 0 if rtype == REC_TRIM else frame_count(length)
    fields = dict(rtype=rtype, nframes=nframes, group=7, volume=3, seq=123456789, offset=(5 << 40) + 4099,
                  length=length, stored=nframes * FRAME_ENTRY_SIZE + 1000 * nframes,
                  tstamp=1_700_000_000 * 10**9)
    fields.update(kw)
    return RecordHeader(**fields)


@pytest.mark.parametrize("rtype", [REC_WRITE, REC_TRIM, REC_RELOCATE, REC_VOLUME])
def test_record_header_round_trip(rtype):
    rng = random.Random(rtype)
    h = _header(rtype=rtype)
    table = pack_frame_table(_entries(h.nframes, rng))
    raw = pack_record_header(h, table, 7)
    assert len(raw) == RECORD_HEADER_SIZE
    assert raw[4] == RECORD_VERSION
    got, hcsum = unpack_record_header(raw)
    assert got == h
    assert got.total_size == RECORD_HEADER_SIZE + h.stored
    assert got.table_size == h.nframes * FRAME_ENTRY_SIZE == len(table)
    verify_header(raw, table, hcsum, 7)  # does not raise
    verify_header(memoryview(raw), memoryview(table), hcsum, 7)


def _packed(seed: int, segno: int) -> tuple[RecordHeader, bytes, bytes, int]:
    """A record header with a random frame table, packed for ``segno`` and checked there:
    the header, its table, its bytes and its stored checksum."""
    h = _header()
    table = pack_frame_table(_entries(h.nframes, random.Random(seed)))
    raw = pack_record_header(h, table, segno)
    _, hcsum = unpack_record_header(raw)
    verify_header(raw, table, hcsum, segno)
    return h, table, raw, hcsum


def test_a_record_is_valid_only_in_the_segment_it_was_written_for():
    """Version 2 seeds the header checksum with the segment number: the records a reused
    file still holds from its earlier segment fail in the new one (spares.py)."""
    _h, table, raw, hcsum = _packed(3, 41)
    for other in (0, 40, 42, 41 + (1 << 32)):
        with pytest.raises(BadRecord, match="checksum"):
            verify_header(raw, table, hcsum, other)


def test_version_1_records_of_older_pools_are_still_read_anywhere():
    rng = random.Random(4)
    h = _header()
    table = pack_frame_table(_entries(h.nframes, rng))
    raw = pack_record_header(h, table, None)
    assert raw[4] == FORMAT_VERSION == 1
    got, hcsum = unpack_record_header(raw)
    assert got == h
    verify_header(raw, table, hcsum, 41)  # unseeded: the segment number plays no part


def _patch(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value):]


@pytest.mark.parametrize("case", ["magic", "version", "type", "length", "nframes", "stored_low",
                                  "stored_high", "short"])
def test_record_header_rejects_bad_fields(case):
    h = _header()
    raw = pack_record_header(h, b"", 5)
    if case == "magic":
        bad = _patch(raw, 0, b"XREC")
    elif case == "version":
        bad = _patch(raw, 4, bytes([4]))
    elif case == "type":
        bad = _patch(raw, 5, bytes([99]))
    elif case == "length":
        bad = pack_record_header(_header(length=MAX_RECORD + 1, nframes=frame_count(MAX_RECORD + 1)), b"", 5)
    elif case == "nframes":
        bad = pack_record_header(_header(nframes=h.nframes + 1), b"", 5)
    elif case == "stored_low":
        bad = pack_record_header(_header(stored=h.nframes * FRAME_ENTRY_SIZE - 1), b"", 5)
    elif case == "stored_high":
        bad = pack_record_header(_header(stored=h.nframes * (FRAME_ENTRY_SIZE + FRAME_SIZE + 64) + 1), b"", 5)
    else:
        bad = raw[:RECORD_HEADER_SIZE - 1]
    with pytest.raises(BadRecord):
        unpack_record_header(bad)


def test_trim_record_must_have_no_frames():
    raw = pack_record_header(_header(rtype=REC_TRIM, nframes=1, stored=FRAME_ENTRY_SIZE), b"", 5)
    with pytest.raises(BadRecord):
        unpack_record_header(raw)


def test_header_checksum_detects_changes_to_header_and_table():
    rng = random.Random(1)
    h, table, raw, hcsum = _packed(1, 5)
    # A changed volume offset still parses, but fails the checksum.
    moved = _patch(raw, 24, struct.pack("<Q", h.offset + 4096))
    moved_h, moved_csum = unpack_record_header(moved)
    assert moved_h.offset == h.offset + 4096
    with pytest.raises(BadRecord, match="checksum"):
        verify_header(moved, table, moved_csum, 5)
    # Every single-bit change of the frame table is caught.
    for pos in rng.sample(range(len(table)), 20):
        bad_table = bytearray(table)
        bad_table[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(BadRecord, match="checksum"):
            verify_header(raw, bytes(bad_table), hcsum, 5)
    # So is a wrong stored checksum.
    with pytest.raises(BadRecord):
        verify_header(raw, table, hcsum ^ 1, 5)


def test_frame_table_round_trip():
    rng = random.Random(2)
    entries = _entries(64, rng) + [FrameEntry(0, FF_ZERO, 0, bytes(12))]
    table = pack_frame_table(entries)
    assert len(table) == len(entries) * FRAME_ENTRY_SIZE
    assert unpack_frame_table(table, len(entries)) == tuple(entries)
    assert unpack_frame_table(memoryview(table), 3) == tuple(entries[:3])
    assert unpack_frame_table(b"", 0) == ()


def test_segment_header_round_trip_and_checks():
    raw = pack_segment_header(POOL_UUID, 42, 1234)
    assert len(raw) == SEGMENT_HEADER_SIZE
    unpack_segment_header(raw, POOL_UUID, 42)
    with pytest.raises(BadRecord, match="another pool"):
        unpack_segment_header(raw, uuid.uuid4().bytes, 42)
    with pytest.raises(BadRecord, match="file name"):
        unpack_segment_header(raw, POOL_UUID, 43)
    with pytest.raises(BadRecord):
        unpack_segment_header(_patch(raw, 30, b"\xff"), POOL_UUID, 42)
    with pytest.raises(BadRecord):
        unpack_segment_header(raw[:-1], POOL_UUID, 42)


def test_locations_and_names():
    for segno, pos in [(1, SEGMENT_HEADER_SIZE), (7, (1 << 32) - 1), (10**9, 12345)]:
        loc = make_loc(segno, pos)
        assert (loc_segno(loc), loc_pos(loc)) == (segno, pos)
        assert loc >= 1 << 32  # 0 and 1 stay free as chunk-map markers
    assert segment_name(12) == "0000000012.seg"
    assert [frame_count(n) for n in (1, FRAME_SIZE, FRAME_SIZE + 1, MAX_RECORD)] == [1, 1, 2, 64]


# -- frame codec -----------------------------------------------------------------------------

AD = (3, REC_WRITE, 77, 5 * FRAME_SIZE, 9, 4096)  # volume rtype seq offset segno pos


def _compressible(n: int, rng: random.Random) -> bytes:
    words = [rng.randbytes(8) for _ in range(16)]
    return b"".join(rng.choice(words) for _ in range((n + 7) // 8))[:n]


def _codec(compress: bool, encrypt: bool, key: bytes | None = None) -> FrameCodec:
    return FrameCodec(POOL_UUID, compress, (key or os.urandom(32)) if encrypt else None)


def _decode_all(codec: FrameCodec, entries: list[FrameEntry], stored: list, length: int,
                ad: tuple | None) -> bytes:
    out, bodies = [], iter(stored)
    for i, e in enumerate(entries):
        body = b"" if e.flags & FF_ZERO else next(bodies)
        flen = min(FRAME_SIZE, length - i * FRAME_SIZE)
        out.append(bytes(codec.decode(e, body, flen, ad, i, f"frame {i}")))
    assert next(bodies, None) is None
    return b"".join(out)


@pytest.mark.parametrize("compress,encrypt", list(itertools.product([False, True], repeat=2)))
def test_codec_round_trip(compress, encrypt):
    rng = random.Random(10 + 2 * compress + encrypt)
    codec = _codec(compress, encrypt)
    assert codec.encrypted == encrypt
    ad = AD if encrypt else None
    kinds = ["random", "compressible", "zero", "random", "zero", "compressible"]
    frames = {
        "random": lambda n: rng.randbytes(n),
        "compressible": lambda n: _compressible(n, rng),
        "zero": lambda n: bytes(n),
    }
    parts = [frames[k](FRAME_SIZE) for k in kinds] + [rng.randbytes(1000)]  # short last frame
    kinds.append("random")
    data = b"".join(parts)
    entries, stored = codec.encode(data, ad)
    assert len(entries) == frame_count(len(data)) == len(kinds)
    nonzero = iter(stored)
    for kind, part, e in zip(kinds, parts, entries, strict=True):
        if kind == "zero":
            assert e.flags == FF_ZERO and e.stored_len == 0
            continue
        body = next(nonzero)
        assert len(body) == e.stored_len
        assert xxhash.xxh3_64_intdigest(body) == e.csum
        assert bool(e.flags & FF_AES) == encrypt
        assert bool(e.flags & FF_LZ4) == (compress and kind == "compressible")
        if encrypt:
            assert e.nonce != bytes(12)
            assert bytes(part[:64]) not in bytes(body)
        else:
            assert e.nonce == bytes(12)
        if not compress and not encrypt:
            assert bytes(body) == part
        if compress and kind == "compressible":
            assert e.stored_len < len(part) - len(part) // 8 + (16 if encrypt else 0)
    assert next(nonzero, None) is None
    assert len(stored) == kinds.count("random") + kinds.count("compressible")
    assert _decode_all(codec, entries, stored, len(data), ad) == data


@pytest.mark.parametrize("compress,encrypt", list(itertools.product([False, True], repeat=2)))
def test_codec_all_zero_input_stores_nothing(compress, encrypt):
    codec = _codec(compress, encrypt)
    data = bytes(3 * FRAME_SIZE + 5)
    entries, stored = codec.encode(data, AD)
    assert stored == []
    assert all(e.flags == FF_ZERO and e.stored_len == 0 for e in entries)
    assert _decode_all(codec, entries, stored, len(data), AD) == data


@pytest.mark.parametrize("at", [0, 4095, FRAME_SIZE - 1])
def test_a_frame_with_one_nonzero_byte_is_stored(at):
    """The zero test compares whole frames (a memcmp), not a prefix: one byte anywhere counts."""
    codec = _codec(False, False)
    data = bytearray(FRAME_SIZE)
    data[at] = 7
    entries, stored = codec.encode(memoryview(data))
    assert entries[0].flags == 0 and len(stored) == 1
    assert _decode_all(codec, entries, stored, FRAME_SIZE, None) == bytes(data)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("size", [1, 4096, FRAME_SIZE])
def test_a_one_frame_write_is_encoded_like_the_first_frame_of_a_longer_one(compress, size):
    rng = random.Random(size)
    codec = _codec(compress, False)
    for data in (rng.randbytes(size), _compressible(size, rng), bytes(size)):
        one = codec.encode(data)  # the one-frame path
        longer = codec.encode(bytes(FRAME_SIZE) + data)  # the loop: a zero frame, then the same frame
        assert one[0] == longer[0][1:]
        assert [bytes(b) for b in one[1]] == [bytes(b) for b in longer[1]]
        assert len(one[0]) == 1 and len(one[1]) == (0 if data == bytes(size) else 1)
        assert _decode_all(codec, *one, size, None) == data


def test_encrypting_codec_needs_associated_data():
    with pytest.raises(ValueError):
        _codec(False, True).encode(b"x" * 100)


def test_lz4_kept_only_when_it_saves_an_eighth():
    """Frames of random bytes followed by zeros: sweep the zero share across the 1/8 line."""
    rng = random.Random(5)
    seen = {"kept": 0, "dropped_although_smaller": 0}
    for zeros in range(0, FRAME_SIZE // 4, 512):
        codec = _codec(True, False)  # a fresh one each time: the early abort is tested in test_lz4gate
        frame = rng.randbytes(FRAME_SIZE - zeros) + bytes(zeros)
        packed = lz4.block.compress(frame, store_size=False)
        (e,), (body,) = codec.encode(frame)
        if len(packed) <= FRAME_SIZE - FRAME_SIZE // 8:
            assert e.flags == FF_LZ4 and bytes(body) == packed
            seen["kept"] += 1
        else:
            assert e.flags == 0 and bytes(body) == frame
            if len(packed) < FRAME_SIZE:
                seen["dropped_although_smaller"] += 1
        assert bytes(codec.decode(e, body, FRAME_SIZE, None, 0, "f")) == frame
    # The sweep really crossed the threshold in both directions.
    assert seen["kept"] > 0 and seen["dropped_although_smaller"] > 0


@pytest.mark.parametrize("compress,encrypt", list(itertools.product([False, True], repeat=2)))
def test_flipped_byte_fails_checksum(compress, encrypt):
    rng = random.Random(20)
    codec = _codec(compress, encrypt)
    frame = _compressible(FRAME_SIZE, rng) if compress else rng.randbytes(FRAME_SIZE)
    (e,), (body,) = codec.encode(frame, AD)
    for _ in range(5):
        bad = bytearray(body)
        bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        with pytest.raises(CorruptData, match="checksum"):
            codec.decode(e, bytes(bad), FRAME_SIZE, AD, 0, "frame 0")
    with pytest.raises(CorruptData, match="checksum"):
        codec.decode(e, bytes(body)[:-1], FRAME_SIZE, AD, 0, "frame 0")


@pytest.mark.parametrize("compress", [False, True])
def test_gcm_catches_tampering_behind_a_fixed_checksum(compress):
    rng = random.Random(21)
    codec = _codec(compress, True)
    frame = _compressible(FRAME_SIZE, rng)
    (e,), (body,) = codec.encode(frame, AD)
    for _ in range(5):
        bad = bytearray(body)
        bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        forged = FrameEntry(e.stored_len, e.flags, xxhash.xxh3_64_intdigest(bytes(bad)), e.nonce)
        with pytest.raises(CorruptData, match="authentication"):
            codec.decode(forged, bytes(bad), FRAME_SIZE, AD, 0, "frame 0")
    # A changed nonce in the table is caught the same way.
    forged = FrameEntry(e.stored_len, e.flags, e.csum, bytes(12))
    with pytest.raises(CorruptData, match="authentication"):
        codec.decode(forged, body, FRAME_SIZE, AD, 0, "frame 0")
    # The untouched frame still decodes.
    assert bytes(codec.decode(e, body, FRAME_SIZE, AD, 0, "frame 0")) == frame


@pytest.mark.parametrize("field", ["volume", "rtype", "seq", "offset", "segno", "pos", "index"])
def test_misplaced_or_stale_frame_fails_authentication(field):
    codec = _codec(True, True)
    frame = os.urandom(FRAME_SIZE // 2) + bytes(FRAME_SIZE // 2)
    (e,), (body,) = codec.encode(frame, AD)
    names = ["volume", "rtype", "seq", "offset", "segno", "pos"]
    ad, index = list(AD), 0
    if field == "index":
        index = 1
    else:
        i = names.index(field)
        ad[i] = ad[i] + (REC_RELOCATE - REC_WRITE if field == "rtype" else 1)
    with pytest.raises(CorruptData, match="authentication"):
        codec.decode(e, body, len(frame), tuple(ad), index, "frame")
    assert bytes(codec.decode(e, body, len(frame), AD, 0, "frame")) == frame


def test_other_pool_uuid_fails_authentication():
    key = os.urandom(32)
    frame = os.urandom(1000)
    (e,), (body,) = FrameCodec(POOL_UUID, False, key).encode(frame, AD)
    other = FrameCodec(uuid.uuid4().bytes, False, key)
    with pytest.raises(CorruptData):
        other.decode(e, body, len(frame), AD, 0, "frame")


@pytest.mark.parametrize("compress", [False, True])
def test_wrong_key_fails(compress):
    frame = _compressible(FRAME_SIZE, random.Random(3))
    (e,), (body,) = _codec(compress, True).encode(frame, AD)
    with pytest.raises(CorruptData, match="authentication"):
        _codec(compress, True).decode(e, body, FRAME_SIZE, AD, 0, "frame")
    with pytest.raises(CorruptData, match="no key"):
        _codec(compress, False).decode(e, body, FRAME_SIZE, AD, 0, "frame")
    with pytest.raises(CorruptData, match="no key"):
        _codec(compress, True).decode(e, body, FRAME_SIZE, None, 0, "frame")


def test_wrong_logical_length_detected():
    codec = _codec(False, False)
    frame = os.urandom(500)
    (e,), (body,) = codec.encode(frame)
    with pytest.raises(CorruptData, match="length"):
        codec.decode(e, body, 501, None, 0, "frame")


@pytest.mark.parametrize("frames", [1, 3])
def test_first_bad_stored_frame_finds_the_damaged_or_short_frame(frames: int):
    """The one-pass check of frames stored as is, one frame (a small record's read) or several."""
    data = [os.urandom(FRAME_SIZE if i < frames - 1 else 4096) for i in range(frames)]
    offs = list(itertools.accumulate((len(d) for d in data), initial=0))
    csums = [xxhash.xxh3_64_intdigest(d) for d in data]
    raw = b"".join(data)
    assert first_bad_stored_frame(raw, offs, csums, 0, frames - 1) is None
    last = frames - 1
    damaged = bytearray(raw)
    damaged[offs[last] + 7] ^= 1
    assert first_bad_stored_frame(bytes(damaged), offs, csums, 0, last) == last
    assert first_bad_stored_frame(raw[:-1], offs, csums, 0, last) is not None  # short: the read was cut
    assert first_bad_stored_frame(data[last], offs, csums, last, last) is None
