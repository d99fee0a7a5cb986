"""Large reads sent in pieces (vstor/nbd/serving/sender.py and ReadServer._stream_read), and asked for
ahead in a sequential stream (vstor/store/reads/ahead.py, Store.prefetch): with
structured replies a read over INLINE_READ_MAX goes out as OFFSET_DATA chunks of PIECE bytes,
in order, DONE on the last, while the next piece is read; DF keeps it one chunk; a piece that
fails its checksum ends the reply with an error chunk at its offset and no byte of it; a DISC
right behind large reads still gets every reply out first. The sender itself: pieces in
order, at most BUFFERS held, and a failed socket stops it and reaches the connection."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from nbdkit import MiB, Raw, handle, nbd, served
from poolkit import cached_bytes, evict_segments, frame_on_disk, seg_flip

from vstor.errors import CorruptData
from vstor.nbd import proto as P
from vstor.nbd.serving.reads import INLINE_READ_MAX
from vstor.nbd.serving.sender import PIECE, ReplySender
from vstor.store.journal.format import FRAME_SIZE
from vstor.store.reads.ahead import StreamAhead

pytestmark = pytest.mark.usefixtures("pool_backend")


# -- the sender alone ----------------------------------------------------------------------------
class GatedSocket:
    """A send function that blocks each call until the test opens the gate (or fails it)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.calls = threading.Semaphore(0)  # released as each send starts
        self.gate = threading.Semaphore(0)
        self.fail = False

    def send(self, *parts: bytes | memoryview) -> None:
        self.calls.release()
        assert self.gate.acquire(timeout=10)
        if self.fail:
            raise ConnectionResetError("the client went away")
        self.sent.append(b"".join(bytes(p) for p in parts))


@pytest.mark.no_pool("the sender thread over a send function")
def test_sender_sends_pieces_in_order_and_holds_at_most_its_buffers() -> None:
    sock, replied = GatedSocket(), []
    sender = ReplySender(sock.send, replied.append, "test-sender", piece=8, buffers=2)
    try:
        a, b = sender.buffer(), sender.buffer()
        a[:] = b"AAAAAAAA"
        sender.put(b"h1", a[:4], a, False)
        b[:] = b"BBBBBBBB"
        sender.put(b"h2", b, b, True)
        assert sock.calls.acquire(timeout=10)  # the first send has started and is held at the gate
        got: list[memoryview] = []
        waiter = threading.Thread(target=lambda: got.append(sender.buffer()))
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive() and not got  # both buffers are out: a third waits for a send
        sock.gate.release()
        waiter.join(10)
        assert got and got[0].obj is a.obj  # the first piece's buffer, free again once sent
        sock.gate.release()
        sender.drain()
        assert sock.sent == [b"h1AAAA", b"h2BBBBBBBB"]
        assert replied == [1]  # one reply: only the last chunk counts
    finally:
        sock.gate.release()
        sender.close()


@pytest.mark.no_pool("the sender thread over a send function")
def test_a_failed_send_drops_the_queue_and_reaches_the_connection() -> None:
    sock, replied = GatedSocket(), []
    sender = ReplySender(sock.send, replied.append, "test-sender", piece=8, buffers=3)
    try:
        bufs = [sender.buffer() for _ in range(3)]
        for i, buf in enumerate(bufs):
            sender.put(b"h%d" % i, buf, buf, i == 2)
        sock.fail = True
        for _ in bufs:
            sock.gate.release()
        with pytest.raises(OSError, match="the client went away"):
            sender.drain()
        assert sock.sent == [] and replied == []  # nothing after the failure is sent or counted
        with pytest.raises(OSError):
            sender.buffer()
    finally:
        sender.close()


@pytest.mark.no_pool("the sender over a socket pair")
def test_stream_reads_pieces_in_order_and_ends_at_a_failed_one_with_its_offset() -> None:
    a, b = socket.socketpair()
    sender = ReplySender(lambda *parts: a.sendmsg(list(parts)) and None, lambda n: None, "test-sender",
                         piece=1000, buffers=2)
    data = os.urandom(10_000)
    asked: list[int] = []

    def read_into(offset: int, view: memoryview) -> None:
        asked.append(offset)
        if offset >= 5000:
            raise CorruptData("checksum mismatch in frame 7")
        view[:] = data[offset : offset + len(view)]

    try:
        sender.stream(42, 500, 2200, read_into)  # 3 pieces: 1000, 1000, 200 bytes
        sender.stream(43, 3000, 4000, read_into)  # fails at its third piece
        sender.drain()
        raw = _SockReader(b)
        got = _replies(raw, 2)
        assert _data(got[42]) == [(500, data[500:1500]), (1500, data[1500:2500]), (2500, data[2500:2700])]
        assert [f for _t, f, _p in got[42]] == [0, 0, P.REPLY_FLAG_DONE]
        assert _data(got[43]) == [(3000, data[3000:4000]), (4000, data[4000:5000])]  # the good ones
        ctype, flags, payload = got[43][-1]
        assert (ctype, flags) == (P.REPLY_ERROR_OFFSET, P.REPLY_FLAG_DONE)
        assert int.from_bytes(payload[:4], "big") == P.EIO and int.from_bytes(payload[-8:], "big") == 5000
        assert asked == [500, 1500, 2500, 3000, 4000, 5000]  # nothing read past the failed piece
    finally:
        sender.close()
        a.close()
        b.close()


class _SockReader:
    """Raw's recv over a plain socket (the sender tests have no server)."""

    def __init__(self, sock: socket.socket) -> None:
        self.s = sock

    def recv(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.s.recv(n - len(out))
            assert chunk, "closed early"
            out += chunk
        return out


# -- through the server --------------------------------------------------------------------------
def _replies(raw: Raw | _SockReader, n: int) -> dict[int, list[tuple[int, int, bytes]]]:
    """The structured chunks of the next ``n`` replies (chunks of different replies may
    interleave), up to each one's DONE flag: {cookie: [(type, flags, payload), ...]}."""
    out: dict[int, list[tuple[int, int, bytes]]] = {}
    while n:
        magic, flags, ctype, cookie, length = P.STRUCTURED_HEADER.unpack(raw.recv(P.STRUCTURED_HEADER.size))
        assert magic == P.STRUCTURED_REPLY_MAGIC
        out.setdefault(cookie, []).append((ctype, flags, raw.recv(length)))
        n -= bool(flags & P.REPLY_FLAG_DONE)
    return out


def _chunks(raw: Raw) -> list[tuple[int, int, bytes]]:
    """The chunks of the one reply in flight."""
    ((_cookie, chunks),) = _replies(raw, 1).items()
    return chunks


def _data(chunks: list[tuple[int, int, bytes]]) -> list[tuple[int, bytes]]:
    """(offset, data) of each OFFSET_DATA chunk."""
    return [(int.from_bytes(p[:8], "big"), p[8:]) for t, _f, p in chunks if t == P.REPLY_OFFSET_DATA]


def _serve(s, size: int) -> tuple[int, bytes, Raw]:
    """Export "vol" with ``size`` random bytes at its start; a raw client with structured replies."""
    vid, data = s.written(size)
    raw = Raw(s.port)
    raw.go("vol", structured=True)
    return vid, data, raw


@pytest.mark.local_only("large reads are streamed only from a local pool")
def test_a_large_read_goes_out_in_pieces_in_order_and_df_keeps_it_whole(tmp_path) -> None:
    with served(tmp_path, volumes={"vol": 8 * MiB}) as s:
        _vid, data, raw = _serve(s, 4 * MiB)
        off, n = 512, 2 * MiB + 100  # unaligned on both ends
        raw.s.sendall(P.request(P.CMD_READ, 7, off, n))
        chunks = _replies(raw, 1)[7]
        assert all(t == P.REPLY_OFFSET_DATA for t, _f, _p in chunks)
        assert [f & P.REPLY_FLAG_DONE for _t, f, _p in chunks] == [0] * (len(chunks) - 1) + [P.REPLY_FLAG_DONE]
        pieces = _data(chunks)
        assert len(pieces) == -(-n // PIECE) and all(len(d) <= PIECE for _o, d in pieces)
        assert [o for o, _d in pieces] == list(range(off, off + n, PIECE))  # in order, back to back
        assert b"".join(d for _o, d in pieces) == data[off : off + n]
        raw.s.sendall(P.request(P.CMD_READ, 8, off, n, P.CMDF_DF))  # don't fragment: one chunk
        chunks = _replies(raw, 1)[8]
        assert [(o, len(d)) for o, d in _data(chunks)] == [(off, n)] and chunks[0][1] & P.REPLY_FLAG_DONE
        assert _data(chunks)[0][1] == data[off : off + n]
        raw.s.sendall(P.request(P.CMD_READ, 9, 0, INLINE_READ_MAX))  # not over the threshold: one chunk
        assert _data(_chunks(raw)) == [(0, data[:INLINE_READ_MAX])]
        raw.close()


@pytest.mark.local_only("large reads are streamed only from a local pool")
def test_a_corrupt_frame_ends_a_streamed_read_with_an_error_at_its_piece(tmp_path) -> None:
    with served(tmp_path, volumes={"vol": 8 * MiB}) as s:
        vid, data, raw = _serve(s, 2 * MiB)
        bad = (PIECE + PIECE // 2) // FRAME_SIZE  # a frame inside the second piece
        segno, at = frame_on_disk(s.store, vid, bad)
        seg_flip(s.pool, segno, at + 1000)
        raw.s.sendall(P.request(P.CMD_READ, 21, 0, 2 * MiB) + P.request(P.CMD_READ, 22, 3 * PIECE, 8192))
        got = _replies(raw, 2)  # the small read's reply may come first: replies go in any order
        assert _data(got[21]) == [(0, data[:PIECE])]  # the good piece before the damage, and no byte after
        ctype, flags, payload = got[21][-1]
        assert (ctype, flags) == (P.REPLY_ERROR_OFFSET, P.REPLY_FLAG_DONE)
        assert int.from_bytes(payload[:4], "big") == P.EIO
        assert int.from_bytes(payload[-8:], "big") == PIECE  # where the failed piece starts
        assert b"checksum" in payload
        assert _data(got[22]) == [(3 * PIECE, data[3 * PIECE : 3 * PIECE + 8192])]  # the connection goes on
        raw.close()


def test_every_reply_goes_out_before_a_disc_behind_large_reads(tmp_path) -> None:
    with served(tmp_path, volumes={"vol": 8 * MiB}) as s:
        _vid, data, raw = _serve(s, 8 * MiB)
        reqs = [P.request(P.CMD_READ, 100 + i, i * MiB, MiB) for i in range(8)]
        raw.s.sendall(b"".join(reqs) + P.request(P.CMD_DISC, 999))
        got = {c: b"".join(d for _o, d in sorted(_data(chunks))) for c, chunks in _replies(raw, 8).items()}
        assert got == {100 + i: data[i * MiB : (i + 1) * MiB] for i in range(8)}
        assert raw.closed()
        raw.close()


@pytest.mark.skipif(nbd is None, reason="needs python3-libnbd (make setup)")
def test_libnbd_reads_streamed_pieces_and_sees_the_error(tmp_path) -> None:
    with served(tmp_path, volumes={"vol": 8 * MiB}) as s:
        vid, data = s.written(4 * MiB)
        h = handle(s.uri("vol"))
        seen: list[tuple[int, int]] = []

        def chunk(subbuf: bytes, offset: int, status: int, error: int) -> int:
            seen.append((offset, len(subbuf)))
            return 0

        assert h.pread_structured(3 * MiB, 4096, chunk) == data[4096 : 4096 + 3 * MiB]
        assert sum(n for _o, n in seen) == 3 * MiB
        local = s.store.journal.local_files
        assert len(seen) == (-(-3 * MiB // PIECE) if local else 1)
        segno, at = frame_on_disk(s.store, vid, 40)
        seg_flip(s.pool, segno, at + 7)
        with pytest.raises(nbd.Error) as e:
            h.pread(3 * MiB, 0)
        assert e.value.errno == "EIO"
        assert h.pread(MiB, 0) == data[:MiB]  # before the damaged frame
        h.shutdown()



# -- read-ahead of a sequential stream -------------------------------------------------------------
@pytest.mark.no_pool("pure logic")
def test_stream_ahead_asks_past_a_sequential_stream_once_and_stops_at_a_jump() -> None:
    ahead = StreamAhead(ahead=4 * MiB, step=MiB)
    size = 16 * MiB
    assert ahead.next_range(0, MiB, size) is None  # one read is no stream yet
    assert ahead.next_range(MiB, MiB, size) == (2 * MiB, 4 * MiB)  # continues it: the next 4 MiB
    assert ahead.next_range(2 * MiB, MiB, size) == (6 * MiB, MiB)  # then 1 MiB more per MiB read
    assert ahead.next_range(3 * MiB, 512 << 10, size) is None  # less than a step past what was asked
    assert ahead.next_range(3 * MiB + (512 << 10), 512 << 10, size) == (7 * MiB, MiB)
    assert ahead.next_range(9 * MiB, MiB, size) is None  # a jump ends the stream
    assert ahead.next_range(10 * MiB, MiB, size) == (11 * MiB, 4 * MiB)  # a new one, asked afresh
    assert ahead.next_range(11 * MiB, MiB, size) == (15 * MiB, MiB)  # up to the end of the export
    assert ahead.next_range(12 * MiB, MiB, size) is None and ahead.next_range(13 * MiB, 3 * MiB, size) is None


@pytest.mark.local_only("the page cache of local segment files")
def test_store_prefetch_warms_the_range_asked_for_and_ignores_what_is_gone(tmp_path) -> None:
    with served(tmp_path, volumes={"vol": 16 * MiB}) as s:
        vid = s.store.volume("vol").id
        data = os.urandom(8 * MiB)
        for off in range(0, 8 * MiB, MiB):
            s.store.write(vid, off, data[off : off + MiB])
        s.store.sync()
        evict_segments(s.pool)
        assert cached_bytes(s.pool) < 64 << 10
        s.store.prefetch(vid, 2 * MiB, 2 * MiB)
        deadline = time.monotonic() + 10
        while cached_bytes(s.pool) < 2 * MiB:  # WILLNEED reads in the background
            assert time.monotonic() < deadline, "the range asked for never reached the page cache"
            time.sleep(0.01)
        assert cached_bytes(s.pool) < 2 * MiB + (256 << 10)  # that range's records, not the volume
        assert s.store.read(vid, 2 * MiB, 2 * MiB) == data[2 * MiB : 4 * MiB]
        s.store.prefetch(vid, 12 * MiB, 4 * MiB)  # never written: nothing to read
        s.store.prefetch(999, 0, MiB)  # no such volume: a hint, ignored
        s.store.prefetch(vid, 0, MiB, sid=42)  # no such snapshot
