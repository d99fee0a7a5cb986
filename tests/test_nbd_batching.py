"""Reply batching (vstor/nbd/serving/replies.py) and the read path of vstor/nbd/serving/conn.py: pipelined
requests each get exactly one reply with their own handle and data, a request after a write
sees it; a frame that fails its checksum is EIO every time, never data. On a local pool queued
reads are served in place or, when they miss the page cache, deferred while the kernel reads
them; on RADOS ([rados] variants) they go to the read workers (vstor/nbd/serving/readers.py)."""

from __future__ import annotations

import os
import random
import socket

import pytest
from nbdkit import MiB, Raw, handle, nbd, served
from poolkit import cached_bytes, evict_segments, frame_on_disk, seg_flip
from poolsite import active

from vstor.nbd import proto as P
from vstor.nbd.serving.replies import ReplyBatch
from vstor.store.journal.format import FRAME_SIZE

pytestmark = pytest.mark.usefixtures("pool_backend")


@pytest.mark.no_pool("a ReplyBatch over a socket pair")
def test_reply_batch_sends_in_order_once_per_flush_and_at_its_limit() -> None:
    a, b = socket.socketpair()
    try:
        sent: list[int] = []

        def send(*parts: bytes | memoryview) -> None:
            a.sendmsg(list(parts))

        batch = ReplyBatch(send, sent.append, limit=64)
        batch.add(b"one.", b"[1]")
        batch.add(memoryview(b"two.[22]"))
        assert len(batch) == 2 and batch.sends == 0 and sent == []  # nothing goes out before the flush
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(100)
        assert batch.flush() == 2 and batch.flush() == 0  # an empty batch sends nothing
        assert b.recv(100) == b"one.[1]two.[22]"
        assert sent == [2] and batch.sends == 1
        batch.add(b"x" * 40)
        batch.add(b"y" * 30)  # 70 bytes >= limit: out at once, without a flush
        assert sent == [2, 2] and batch.sends == 2 and len(batch) == 0
        assert b.recv(100) == b"x" * 40 + b"y" * 30
        for i in range(5):  # the fourth reply sends the first four: the client starts on them
            batch.add(b"%d" % i)
        assert sent == [2, 2, 4] and len(batch) == 1
        assert b.recv(100) == b"0123"
    finally:
        a.close()
        b.close()


def _reply(raw: Raw, lengths: dict[int, int]) -> tuple[int, int, bytes]:
    """(cookie, error, data) of the next simple reply; a read's data length comes from ``lengths``."""
    magic, err, cookie = P.SIMPLE_REPLY.unpack(raw.recv(16))
    assert magic == P.SIMPLE_REPLY_MAGIC
    n = lengths.get(cookie, 0)
    return cookie, err, raw.recv(n) if n and not err else b""


def test_pipelined_requests_each_get_their_own_reply(tmp_path) -> None:
    with served(tmp_path, volumes={"vol": 8 * MiB}) as s:
        s.export("vol")
        s.start()
        data = os.urandom(4 * MiB)
        s.store.write(s.store.volume("vol").id, 0, data)
        raw = Raw(s.port)
        raw.go("vol")
        new = os.urandom(4096)
        reqs: list[bytes] = []
        lengths: dict[int, int] = {}
        want: dict[int, tuple[int, bytes]] = {}
        for i in range(100):  # small reads at odd offsets (more than READ_QUEUE_MAX at once)
            off = i * 40_009
            reqs.append(P.request(P.CMD_READ, 1000 + i, off, 4096))
            lengths[1000 + i], want[1000 + i] = 4096, (0, data[off : off + 4096])
        reqs.append(P.request(P.CMD_READ, 2000, 8 * MiB - 4096, 8192))  # past the end: EINVAL, in its place
        want[2000] = (P.EINVAL, b"")
        reqs.append(P.request(P.CMD_READ, 2001, 512, 2 * MiB))  # a read too large for the workers
        lengths[2001], want[2001] = 2 * MiB, (0, data[512 : 512 + 2 * MiB])
        reqs.append(P.request(P.CMD_WRITE, 2002, 12288, 4096) + new)
        want[2002] = (0, b"")
        reqs.append(P.request(P.CMD_READ, 2003, 8192, 3 * 4096))  # sees the write just before it
        lengths[2003], want[2003] = 3 * 4096, (0, data[8192:12288] + new + data[16384:20480])
        reqs.append(P.request(P.CMD_READ, 2004, 7 * MiB, 4096))  # never written: zeros
        lengths[2004], want[2004] = 4096, (0, bytes(4096))
        raw.s.sendall(b"".join(reqs))  # all queued at once: served from one receive buffer
        got = [_reply(raw, lengths) for _ in want]
        assert sorted(c for c, _, _ in got) == sorted(want)  # one reply each (queued reads overlap: any order)
        order = [c for c, _, _ in got]
        assert order.index(2001) > max(order.index(1000 + i) for i in range(100))  # a large read waits for them
        assert order.index(2003) > order.index(2002)  # and a request after a write sees it
        assert {c: (e, d) for c, e, d in got} == want
        # FLUSH and a FUA write are answered by a worker, after the batch before them went out
        raw.s.sendall(P.request(P.CMD_WRITE, 3000, 0, 4096, P.CMDF_FUA) + new + P.request(P.CMD_FLUSH, 3001)
                      + P.request(P.CMD_READ, 3002, 0, 4096))
        lengths[3002] = 4096
        got = {c: (e, d) for c, e, d in (_reply(raw, lengths) for _ in range(3))}
        assert got == {3000: (0, b""), 3001: (0, b""), 3002: (0, new)}
        raw.s.sendall(P.request(P.CMD_DISC, 4000))
        assert raw.closed()
        raw.close()
        assert s.server.export_stats()["vol"]["ops"] == 108


@pytest.mark.skipif(nbd is None, reason="needs python3-libnbd (make setup)")
def test_a_corrupt_block_is_eio_on_every_read_and_the_rest_is_served(tmp_path) -> None:
    with served(tmp_path, volumes={"vol": 8 * MiB}) as s:
        vid, data = s.written(4 * FRAME_SIZE)
        h = handle(s.uri("vol"))
        bad = 7 * 4096  # the damaged 4 KiB block of frame 0
        assert h.pread(4096, bad) == data[bad : bad + 4096]  # read (and verified) once before the damage
        segno, at = frame_on_disk(s.store, vid)
        seg_flip(s.pool, segno, at + 30_000)  # inside block 7 of frame 0
        errors_before = s.store.stats.read_errors
        for _ in range(3):  # cached before, damaged since: EIO each time
            with pytest.raises(nbd.Error) as e:
                h.pread(4096, bad)
            assert e.value.errno == "EIO"
        # pipelined reads of both frames: those touching the damaged block fail; another block
        # of the same frame is verified by its own block sum and served
        offsets = (bad, FRAME_SIZE, bad + 100, FRAME_SIZE + 4096, 4096)
        bufs = [nbd.Buffer(4096) for _ in offsets]
        cookies = [h.aio_pread(b, off) for b, off in zip(bufs, offsets, strict=True)]
        while h.aio_in_flight():
            h.poll(-1)
        failed = []
        for ck, off in zip(cookies, offsets, strict=True):
            try:
                assert h.aio_command_completed(ck)
            except nbd.Error as err:
                assert err.errno == "EIO"
                failed.append(off)
        assert failed == [bad, bad + 100]
        assert [bytes(bufs[i].to_bytearray()) for i in (1, 3, 4)] == [
            data[FRAME_SIZE : FRAME_SIZE + 4096], data[FRAME_SIZE + 4096 : FRAME_SIZE + 8192], data[4096:8192]]
        with pytest.raises(nbd.Error):  # the whole frame: its frame checksum
            h.pread(FRAME_SIZE, 0)
        assert s.store.stats.read_errors - errors_before == 6
        assert h.pread(4096, FRAME_SIZE) == data[FRAME_SIZE : FRAME_SIZE + 4096]  # the next frame is intact
        assert h.pread(2 * FRAME_SIZE, 2 * FRAME_SIZE) == data[2 * FRAME_SIZE :]
        h.shutdown()


def _served_with(s, size: int) -> tuple[bytes, Raw]:
    """``size`` random bytes written (and synced) at the start of export "vol", and a raw
    client attached to it."""
    _vid, data = s.written(size)
    raw = Raw(s.port)
    raw.go("vol")
    return data, raw


def _read_all(raw: Raw, offsets: list[int]) -> dict[int, tuple[int, bytes]]:
    """4 KiB reads at ``offsets``, all sent at once (handles 1000, 1001, ...): {handle: (error, data)}."""
    lengths = {1000 + i: 4096 for i in range(len(offsets))}
    raw.s.sendall(b"".join(P.request(P.CMD_READ, 1000 + i, off, 4096) for i, off in enumerate(offsets)))
    got = {c: (e, d) for c, e, d in (_reply(raw, lengths) for _ in offsets)}
    raw.s.sendall(P.request(P.CMD_DISC, 2000))
    assert raw.closed()
    raw.close()
    return got


@pytest.mark.local_only("the page cache of local segment files")
def test_queued_reads_that_miss_the_page_cache_are_deferred_and_answered(tmp_path) -> None:
    with served(tmp_path, volumes={"vol": 16 * MiB}) as s:
        data, raw = _served_with(s, 8 * MiB)
        segno, at = frame_on_disk(s.store, s.store.volume("vol").id)
        seg_flip(s.pool, segno, at + 3 * FRAME_SIZE + 100)  # the first block of frame 3 fails its sum
        evict_segments(s.pool)
        left = cached_bytes(s.pool)  # said if the reads below find the cache warm (a rare failure under load)
        rnd = random.Random(5)
        offsets = [rnd.randrange(8 * MiB // 4096) * 4096 for _ in range(48)] + [3 * FRAME_SIZE, 3 * FRAME_SIZE + 8192]
        want = {1000 + i: (P.EIO, b"") if off == 3 * FRAME_SIZE else (0, data[off : off + 4096])
                for i, off in enumerate(offsets)}
        assert sum(1 for v in want.values() if v[0]) == 1
        assert _read_all(raw, offsets) == want
        waited = s.server.export_stats()["vol"]["reads_waited"]
        # the page cache was empty: misses were deferred, not served blind
        assert 0 < waited <= len(offsets), f"{waited} reads waited; {left} bytes of segments cached after eviction"


def test_queued_reads_on_a_remote_pool_go_to_the_read_workers(tmp_path) -> None:
    with served(tmp_path, volumes={"vol": 8 * MiB}) as s:
        data, raw = _served_with(s, 2 * MiB)
        offsets = [i * 40_009 for i in range(40)]
        assert _read_all(raw, offsets) == {1000 + i: (0, data[off : off + 4096]) for i, off in enumerate(offsets)}
        waited = s.server.export_stats()["vol"]["reads_waited"]
        if active() is None:  # all of it in the page cache: every queued read served in place
            assert waited == 0
        else:  # RADOS: every queued read but the last (nothing queued behind it) went to the workers
            assert waited == len(offsets) - 1
