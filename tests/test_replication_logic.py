"""Replication logic without daemons or sockets: the wire format (frames, batches, copy
ranges), dirty bitmaps against a set-of-granules model, pair states and the handshake verdict,
and the transport's pacing, backoff and address parsing."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
import xxhash

from vstor.errors import Busy, FormatError, UsageError
from vstor.replication import bitmap, wire
from vstor.replication.bitmap import GRANULE, DirtyBitmap
from vstor.replication.pairstate import (
    PAIR,
    PRIMARY,
    ROLE_MOVES,
    SECONDARY,
    SPLIT_BRAIN,
    TRANSITIONS,
    Pair,
    judge,
    require_role,
)
from vstor.replication.transport import DEFAULT_PORT, Backoff, Pacer, parse_address
from vstor.replication.wire import BadFrame, Record
from vstor.store.backend.statefiles import local_files


def split(frame: bytes, expect_no: int) -> tuple[int, int, bytes]:
    """Receive one frame the way Conn.recv does; returns (type, flags, body)."""
    head, rest = frame[: wire.HEADER_SIZE], frame[wire.HEADER_SIZE :]
    ftype, flags, length = wire.parse_header(head, expect_no)
    payload, trailer = rest[:length], rest[length:]
    assert len(trailer) == wire.TRAILER.size
    return ftype, flags, wire.check_payload(head, payload, trailer, flags)


def raw_frame(payload: bytes, flags: int = 0, ftype: int = wire.BATCH, frame_no: int = 0, magic: bytes = wire.MAGIC,
              version: int = wire.PROTOCOL_VERSION, length: int | None = None) -> bytes:
    head = wire.HEADER.pack(magic, version, ftype, flags, len(payload) if length is None else length, frame_no, 0)
    return head + payload + wire.TRAILER.pack(xxhash.xxh3_64_intdigest(head + payload))


PAYLOADS = [b"", b"x", b"ab" * 256, b"abc" * 5000, random.Random(1).randbytes(4096)]


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("payload", PAYLOADS, ids=["empty", "one", "512", "compressible", "random"])
def test_frame_round_trip(payload: bytes, compress: bool) -> None:
    for ftype in wire.TYPE_NAMES:
        frame = wire.pack_frame(ftype, payload, 41, compress=compress)
        got_type, flags, body = split(frame, 41)
        assert (got_type, body) == (ftype, payload)
        # Only payloads over 512 bytes that actually shrink are sent compressed.
        shrinks = compress and payload == b"abc" * 5000
        assert flags == (wire.F_LZ4 if shrinks else 0)
        assert len(frame) < len(payload) if shrinks else len(frame) == 32 + len(payload)


def test_header_rejections() -> None:
    for frame, match in [(raw_frame(b"p", magic=b"XRPL"), "magic"), (raw_frame(b"p", version=2), "version 2"),
                         (raw_frame(b"p", ftype=0), "unknown frame type 0"),
                         (raw_frame(b"p", ftype=11), "unknown frame type 11"),
                         (raw_frame(b"", length=wire.MAX_PAYLOAD + 1), "oversized frame: 16777217 bytes announced"),
                         (raw_frame(b"p", frame_no=6), "frame number 6 where 7"),
                         (raw_frame(b"p", frame_no=8), "frame number 8 where 7")]:
        with pytest.raises(BadFrame, match=match):
            wire.parse_header(frame[: wire.HEADER_SIZE], 7)
    head = raw_frame(b"", length=wire.MAX_PAYLOAD, frame_no=7)[: wire.HEADER_SIZE]
    assert wire.parse_header(head, 7) == (wire.BATCH, 0, wire.MAX_PAYLOAD)  # the largest frame is fine
    with pytest.raises(BadFrame, match="exceeds"):
        wire.pack_frame(wire.COPY, bytes(wire.MAX_PAYLOAD + 1), 0)


@pytest.mark.parametrize("compress", [False, True])
def test_every_flipped_byte_fails_the_checksum(compress: bool) -> None:
    frame = wire.pack_frame(wire.BATCH, b"abc" * 400, 0, compress=compress)
    assert split(frame, 0)[2] == b"abc" * 400
    for i in range(wire.HEADER_SIZE, len(frame)):  # payload and trailer; header bytes are checked too below
        bad = frame[:i] + bytes([frame[i] ^ 0x01]) + frame[i + 1 :]
        with pytest.raises(BadFrame, match="checksum mismatch"):
            split(bad, 0)
    reserved = frame[:20] + b"\x01" + frame[21:]  # the header's reserved field is covered by the checksum
    with pytest.raises(BadFrame, match="checksum mismatch"):
        split(reserved, 0)


def test_corrupted_lz4_with_valid_checksum() -> None:
    truncated = wire.pack_frame(wire.BATCH, b"q" * 4000, 0, compress=True)[24:40]
    for junk in (b"not an lz4 frame at all", truncated):
        with pytest.raises(BadFrame, match="does not decompress"):
            split(raw_frame(junk, flags=wire.F_LZ4), 0)


RECORDS = [Record(10, 1, 0, 5, b"hello", 111), Record(11, 2, 4096, 1 << 20, None, 222),
           Record(12, 1, 8192, 0, b"", 333), Record(13, 7, 1 << 40, 3000, bytes(range(200)) * 15, 444)]


def test_batch_round_trip_and_rejections() -> None:
    payload = wire.pack_batch(RECORDS)
    assert wire.unpack_batch(payload) == RECORDS and wire.unpack_batch(wire.pack_batch([])) == []
    assert wire.unpack_batch(payload)[1].data is None  # a trim stays a trim, not an empty write
    for cut in (0, 3, 4, 4 + wire.RECORD.size - 1, 4 + wire.RECORD.size + 2, len(payload) - 1):
        with pytest.raises(BadFrame, match="truncated"):
            wire.unpack_batch(payload[:cut])
    with pytest.raises(BadFrame, match="trailing bytes"):
        wire.unpack_batch(payload + b"\0")
    data_at = 4 + wire.RECORD.size + 2  # third byte of record 10's data
    flipped = payload[:data_at] + b"X" + payload[data_at + 1 :]
    with pytest.raises(BadFrame, match="record seq 10 fails its checksum"):
        wire.unpack_batch(flipped)
    kind_at = 4 + 24  # the kind byte of the first record header
    with pytest.raises(BadFrame, match="unknown record kind 3"):
        wire.unpack_batch(payload[:kind_at] + b"\x03" + payload[kind_at + 1 :])


def test_copy_ranges() -> None:
    data = bytes(range(256)) * 8
    assert wire.unpack_copy(wire.pack_copy(3, 1 << 33, data)) == (3, 1 << 33, 2048, data)
    assert wire.unpack_copy(wire.pack_copy_zero(4, 65536, 1 << 20)) == (4, 65536, 1 << 20, None)
    good = wire.pack_copy(3, 0, data)
    with pytest.raises(BadFrame, match="fails its checksum"):
        wire.unpack_copy(good[:-1] + bytes([good[-1] ^ 0x80]))
    with pytest.raises(BadFrame, match="length does not match"):
        wire.unpack_copy(good[:-1])
    with pytest.raises(BadFrame, match="truncated copy"):
        wire.unpack_copy(good[: wire.COPY_HEADER.size - 1])
    with pytest.raises(BadFrame, match="carries data"):
        wire.unpack_copy(wire.pack_copy_zero(4, 0, 10) + b"\0")


def model_mark(model: set[int], size: int, gran: int, off: int, length: int) -> None:
    end = min(off + length, size)
    if end > off:
        model.update(range(off // gran, (end - 1) // gran + 1))


def model_runs(model: set[int], size: int, gran: int) -> list[tuple[int, int]]:
    starts = [g for g in sorted(model) if g - 1 not in model]
    ends = [g + 1 for g in sorted(model) if g + 1 not in model]
    return [(a * gran, min(b * gran, size)) for a, b in zip(starts, ends, strict=True)]


def random_marks(bm: DirtyBitmap, model: set[int], rng: random.Random, count: int) -> None:
    size, gran = bm.size, bm.granule
    for _ in range(count):
        off = rng.randrange(size + 2 * gran)  # some start at or past the end: nothing to mark
        length = rng.choice([0, 1, gran, rng.randrange(3 * gran), rng.randrange(size + gran)])
        bm.mark(off, length)
        model_mark(model, size, gran, off, length)
        check(bm, model)


def check(bm: DirtyBitmap, model: set[int]) -> None:
    assert bytes(bm.bits) == sum(1 << g for g in model).to_bytes(len(bm.bits), "little")
    runs = list(bm.runs())
    assert runs == model_runs(model, bm.size, bm.granule)
    assert bm.dirty_bytes() == sum(e - s for s, e in runs)
    assert bm.any() == bool(model)


@pytest.mark.parametrize("size, gran", [(77 * GRANULE, GRANULE), (77 * GRANULE + 1234, GRANULE), (5000, GRANULE),
                                        (203 * 512 + 1, 512), (64 * 512, 512), (1, 512)])
def test_mark_runs_against_model(size: int, gran: int) -> None:
    rng = random.Random(size ^ gran)
    for _ in range(40):
        bm, model = DirtyBitmap(size, gran), set()
        assert len(bm.bits) == ((size + gran - 1) // gran + 7) // 8
        random_marks(bm, model, rng, rng.randint(1, 8))
        bm.clear()
        check(bm, set())


@pytest.mark.parametrize("first, last", [(0, 0), (7, 7), (7, 8), (8, 15), (0, 7), (0, 8), (3, 20), (8, 23), (15, 16),
                                         (1, 30), (16, 31), (31, 31)])
def test_mark_byte_boundaries(first: int, last: int) -> None:
    gran = 4096
    bm = DirtyBitmap(32 * gran - 100, gran)  # the last granule is partial
    bm.mark(first * gran + 17, (last - first) * gran + 1)  # starts inside `first`, ends inside `last`
    check(bm, set(range(first, last + 1)))  # one run, the last one clipped at the volume end


def test_merge_against_model() -> None:
    rng = random.Random(5)
    size, gran = 150 * 1000 + 7, 1000
    for _ in range(30):
        a, b, ma, mb = DirtyBitmap(size, gran), DirtyBitmap(size, gran), set(), set()
        random_marks(a, ma, rng, rng.randint(0, 5))
        random_marks(b, mb, rng, rng.randint(0, 5))
        a.merge(b)
        check(a, ma | mb)
        check(b, mb)
    small = DirtyBitmap(10 * gran, gran)
    small.mark(0, gran)
    a.merge(small)  # a shorter map merges into the covered prefix
    check(a, ma | mb | {0})
    with pytest.raises(ValueError):
        a.merge(DirtyBitmap(size, 2 * gran))


def test_merge_from_larger_volume_stays_within_size() -> None:
    small, large = DirtyBitmap(3 * GRANULE), DirtyBitmap(8 * GRANULE)  # both one byte of bits
    large.mark(5 * GRANULE, GRANULE)
    small.merge(large)
    assert list(small.runs()) == [] and small.dirty_bytes() == 0


def sample_maps() -> dict[int, DirtyBitmap]:
    maps = {3: DirtyBitmap(10 * GRANULE + 5), 1: DirtyBitmap(1000 * GRANULE, 4 * GRANULE), 9: DirtyBitmap(0)}
    maps[3].mark(GRANULE - 1, 2)
    maps[1].mark(123456789, 50 * GRANULE)
    return maps


def test_encode_decode() -> None:
    maps = sample_maps()
    blob = bitmap.encode(maps)
    back = bitmap.decode(blob, "test")
    assert sorted(back) == [1, 3, 9]
    for vid, bm in maps.items():
        assert (back[vid].size, back[vid].granule, back[vid].bits) == (bm.size, bm.granule, bm.bits)
    assert list(back[3].runs()) == [(0, 2 * GRANULE)]
    assert bitmap.decode(bitmap.encode({}), "empty") == {}
    for i in range(0, len(blob), 7):
        with pytest.raises(FormatError, match="fails its checksum"):
            bitmap.decode(blob[:i] + bytes([blob[i] ^ 0x04]) + blob[i + 1 :], "x")
    for bad in (b"", blob[:11], blob[:-1]):
        with pytest.raises(FormatError):
            bitmap.decode(bad, "x")
    body = b"VBMQ" + blob[4:-8]
    with pytest.raises(FormatError, match="not a version 1"):
        bitmap.decode(body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body)), "x")


def test_save_and_load(tmp_path: Path) -> None:
    path, files = str(tmp_path / "g.bitmap"), local_files(str(tmp_path))
    assert bitmap.load(files, "g.bitmap") == {}
    bitmap.save(files, "g.bitmap", {1: DirtyBitmap(GRANULE)})  # all clear, no file: nothing to do
    assert not Path(path).exists()
    maps = sample_maps()
    bitmap.save(files, "g.bitmap", maps)
    assert Path(path).read_bytes() == bitmap.encode(maps)
    assert {v: bytes(b.bits) for v, b in bitmap.load(files, "g.bitmap").items()} == \
        {v: bytes(b.bits) for v, b in maps.items()}
    for bm in maps.values():
        bm.clear()
    bitmap.save(files, "g.bitmap", maps)
    assert not Path(path).exists()
    assert bitmap.load(files, "g.bitmap") == {}


# The reference's table, written out independently: event -> (states it applies to, next state).
SPEC = {"create": ("SIMPLEX", "COPY"), "accept": ("SIMPLEX", "COPY"), "synced": ("COPY RESYNC", "PAIR"),
        "full": ("PAIR", "PFUL"), "relieved": ("PFUL", "PAIR"), "split": ("PAIR PFUL COPY RESYNC", "PSUS"),
        "error": ("COPY PAIR PFUL RESYNC PSUS", "PSUE"), "resync": ("PSUS PSUE SSWS SPLIT_BRAIN", "RESYNC"),
        "takeover": ("PAIR PFUL", "PAIR"), "force": ("PAIR PFUL PSUS PSUE", "SSWS"),
        "split_brain": ("COPY PAIR PFUL PSUS PSUE RESYNC SSWS", "SPLIT_BRAIN"),
        "demote": ("PAIR", "PAIR"), "victim": ("COPY PAIR PFUL PSUS PSUE RESYNC SSWS SPLIT_BRAIN", "RESYNC"),
        "follow_copy": ("COPY PAIR PFUL PSUS PSUE RESYNC", "COPY"),
        "follow_resync": ("COPY PAIR PFUL PSUS PSUE RESYNC", "RESYNC"),
        "peer_split": ("COPY PAIR PFUL PSUS PSUE RESYNC", "PSUS")}
STATES = "SIMPLEX COPY PAIR PFUL PSUS PSUE RESYNC SSWS SPLIT_BRAIN".split()
# event -> (the role it needs, None: either; the role after it); other events keep the role
ROLE_SPEC = {"takeover": (SECONDARY, PRIMARY), "force": (SECONDARY, PRIMARY), "demote": (PRIMARY, SECONDARY),
             "victim": (PRIMARY, SECONDARY), "resync": (None, PRIMARY)}


def make_pair(role: str = SECONDARY, state: str = PAIR, generation: int = 3, reason: str = "") -> Pair:
    return Pair(group="dbs-b", peer="10.0.0.1:7450", peer_name="array-a", peer_group="dbs-a", role=role, state=state,
                generation=generation, history=[[1, 0], [generation, 40]], reason=reason)


def test_transitions_table() -> None:
    expected = {(st, ev): nxt for ev, (froms, nxt) in SPEC.items() for st in froms.split()}
    assert TRANSITIONS == expected
    assert ROLE_MOVES == ROLE_SPEC
    for state in STATES:
        for event in SPEC:
            need, after = ROLE_SPEC.get(event, (None, None))
            for role in (PRIMARY, SECONDARY):
                p = make_pair(role=role, state=state)
                if (state, event) not in expected:
                    with pytest.raises(Busy, match=f"pair dbs-b is {state}: '{event}' is not possible"):
                        p.transition(event)
                    assert (p.state, p.role) == (state, role)
                elif need is not None and role != need:  # the state allows it, the role does not
                    with pytest.raises(Busy, match=f"'{event}' is possible only on the {need}; this array is"):
                        p.transition(event)
                    assert (p.state, p.role) == (state, role)
                else:
                    assert p.transition(event) == expected[state, event] and p.state == expected[state, event]
                    assert p.role == (after or role)


def test_illegal_moves_change_nothing() -> None:
    p = make_pair(role=SECONDARY, state=PAIR)
    with pytest.raises(Busy, match="'demote' is possible only on the primary"):
        p.transition("demote")  # a secondary cannot hand over a role it does not have
    with pytest.raises(Busy, match="'create' is not possible now"):
        p.transition("create")
    p = make_pair(role=PRIMARY, state="PSUE")
    with pytest.raises(Busy, match="is PSUE: 'synced' is not possible now; it is suspended"):
        p.transition("synced")
    with pytest.raises(Busy, match="'force' is not possible|possible only on the secondary"):
        p.promote(10, "force")
    assert (p.role, p.state, p.generation, p.history) == (PRIMARY, "PSUE", 3, [[1, 0], [3, 40]])


def test_promote_serialize_require_role() -> None:
    p = make_pair(generation=2)
    p.history = [[1, 0], [4, 50], [2, 30]]
    p.promote(99)
    assert (p.role, p.generation, p.history) == (PRIMARY, 5, [[1, 0], [4, 50], [2, 30], [5, 99]])
    d = p.as_dict()
    assert d["history"] == [[1, 0], [4, 50], [2, 30], [5, 99]] and d["role"] == PRIMARY
    d["history"][0][1] = 7  # as_dict hands out a copy
    assert p.history[0] == [1, 0]
    q = Pair.from_dict({**p.as_dict(), "unknown_future_field": 1})
    assert q == p
    require_role(p, PRIMARY, "resync")
    p.role = SECONDARY
    with pytest.raises(UsageError, match="runs on the primary; this array is the secondary of pair dbs-b"):
        require_role(p, PRIMARY, "resync")


def hello(**kw: object) -> dict:
    return {"group": "dbs-a", "peer_group": "dbs-b", "group_at_primary": "dbs-a", "role": PRIMARY, "generation": 3,
            "victim": False, **kw}


@pytest.mark.parametrize("local, peer, msg, action, reason", [
    (None, "array-a", hello(), "refuse", "no pair for group 'dbs-b'"),
    (make_pair(), "array-x", hello(), "refuse", "paired with 'array-a', not with 'array-x'"),
    (make_pair(), "array-a", hello(peer_group="other"), "refuse", "group names do not match"),
    (make_pair(), "array-a", hello(group_at_primary="other"), "refuse", "group names do not match"),
    (make_pair(), "array-a", hello(role=SECONDARY), "refuse", "only a primary"),
    (make_pair(), "array-a", hello(), "accept", ""),
    (make_pair(), "array-a", hello(generation=9), "accept", ""),
    (make_pair(), "array-a", hello(generation=2), "refuse", "stale primary: generation 2 is older"),
    (make_pair(role=PRIMARY), "array-a", hello(), "split_brain", "both arrays are primary"),
    (make_pair(role=PRIMARY), "array-a", hello(generation=4), "split_brain", "generation 3 here, 4 at array-a"),
    (make_pair(role=PRIMARY), "array-a", hello(victim=True), "split_brain", ""),
    (make_pair(role=PRIMARY, state=SPLIT_BRAIN), "array-a", hello(victim=True), "accept", "victim"),
    (make_pair(role=PRIMARY, state=SPLIT_BRAIN), "array-a", hello(), "split_brain", ""),
    (make_pair(role=PRIMARY), "array-a", hello(victim=True, generation=4), "accept", "victim"),
    (make_pair(state="PSUE", reason="cannot apply: ENOSPC"), "array-a", hello(state="PAIR"), "refuse",
     "the secondary is suspended (PSUE): cannot apply: ENOSPC; fix the cause there, then run "
     "'vstor pair resync dbs-a' at the primary"),
    (make_pair(state="PSUE"), "array-a", hello(state="PFUL"), "refuse", "suspended (PSUE)"),
    (make_pair(state="PSUE"), "array-a", hello(state="RESYNC"), "accept", ""),
    (make_pair(state="PSUE"), "array-a", hello(state="COPY"), "accept", ""),
])
def test_judge(local: Pair | None, peer: str, msg: dict, action: str, reason: str) -> None:
    verdict = judge(local, peer, msg)
    assert verdict.action == action
    assert reason in verdict.reason


class FakeTime:
    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, []

    def clock(self) -> float:
        return self.now

    def sleep(self, d: float) -> None:
        self.sleeps.append(d)
        self.now += d


def test_pacer() -> None:
    t = FakeTime()
    p = Pacer(1000, t.clock, t.sleep)
    p.take(250)  # the initial quarter-second burst
    assert t.sleeps == []
    p.take(100)
    assert t.sleeps == [pytest.approx(0.1)]
    t.now += 3600  # a long idle period refills at most a quarter second
    p.take(250)
    p.take(50)
    assert t.sleeps[1:] == [pytest.approx(0.05)]
    off = Pacer(0, t.clock, t.sleep)
    off.take(10**9)
    assert len(t.sleeps) == 2
    # The long run: random sizes, some idle time; never faster than the rate after the initial burst, and no
    # slower than needed (the last take may not have slept).
    t, rng, rate = FakeTime(), random.Random(3), 1_000_000
    p = Pacer(rate, t.clock, t.sleep)
    start, total = t.now, 0
    for _ in range(2000):
        n = rng.randrange(1, 65536)
        p.take(n)
        total += n
        if rng.random() < 0.1:
            t.now += rng.random() * 0.01  # time spent elsewhere
    due = (total - rate / 4) / rate
    assert due - 65536 / rate <= t.now - start <= due + 1e-6
    assert all(s > 0 for s in t.sleeps) and len(t.sleeps) > 1000


def test_backoff() -> None:
    twin = random.Random(11)
    b = Backoff(rng=random.Random(11))
    bases = [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    got = [b.next() for _ in bases]
    assert got == [base * twin.uniform(0.75, 1.25) for base in bases]
    assert all(0.75 * base <= g <= 1.25 * base for g, base in zip(got, bases, strict=True))
    assert len(set(got[-3:])) == 3  # jittered, not constant
    b.reset()
    assert 0.375 <= b.next() <= 0.625
    assert 0.75 <= b.next() <= 1.25
    small, twin = Backoff(first=1, cap=3, rng=random.Random(0)), random.Random(0)
    assert [small.next() for _ in range(4)] == [x * twin.uniform(0.75, 1.25) for x in (1, 2, 3, 3)]


def test_parse_address() -> None:
    assert parse_address("10.0.0.2:7451") == ("10.0.0.2", 7451)
    assert parse_address("array-b.example") == ("array-b.example", DEFAULT_PORT)
    assert parse_address("h:1") == ("h", 1) and parse_address("h:65535") == ("h", 65535)
    for bad in ("", ":7450", "h:", "h:0", "h:65536", "h:port", "h:-1", "h: 80"):
        with pytest.raises(UsageError, match="invalid address"):
            parse_address(bad)
