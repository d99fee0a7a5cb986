"""ReadAhead's policy without a cluster (vstor/store/backend/readahead.py): an in-memory segment
whose chunk reads can be made to fail (fault injection). Random small reads go straight to the
backend, sequential ones are served from chunks read ahead, memory stays within the budget,
and a chunk that failed or went stale is never what a read returns."""

from __future__ import annotations

import random

from vstor.store.backend.readahead import ReadAhead

CHUNK = 1024


class Segment:
    """A segment in memory; ``fail`` holds chunk indexes whose read-ahead fails."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        self.fail: set[int] = set()
        self.direct_reads = 0

    def direct(self, segno: int, pos: int, size: int) -> bytes:
        self.direct_reads += 1
        return bytes(self.data[pos:pos + size])

    def fetch(self, segno: int, index: int) -> Done:
        if index in self.fail:
            return Done(None)
        return Done(bytes(self.data[index * CHUNK:(index + 1) * CHUNK]))


class Done:
    def __init__(self, data: bytes | None) -> None:
        self.data = data

    def result(self) -> bytes | None:
        return self.data


def test_sequential_reads_are_served_ahead_and_memory_is_bounded() -> None:
    seg = Segment(random.randbytes(100 * CHUNK + 77))
    ra = ReadAhead(seg.fetch, chunk=CHUNK, depth=4, budget=8)
    out, pos = [], 0
    while got := ra.read(1, pos, 300, seg.direct):
        out.append(got)
        pos += len(got)
        assert ra.held() <= 8
    assert b"".join(out) == seg.data
    assert ra.stats["chunked"] > 10 * ra.stats["direct"], ra.stats
    assert ra.read(1, 5 * CHUNK - 10, 3 * CHUNK, seg.direct) == seg.data[5 * CHUNK - 10:8 * CHUNK - 10]


def test_random_small_reads_go_to_the_backend() -> None:
    seg = Segment(random.randbytes(1000 * CHUNK))
    ra = ReadAhead(seg.fetch, chunk=CHUNK, depth=4, budget=8)
    rng = random.Random(1)
    for _ in range(200):
        pos = rng.randrange(0, 999 * CHUNK)
        assert ra.read(1, pos, 100, seg.direct) == seg.data[pos:pos + 100]
    assert ra.stats["fetched"] < 10 and seg.direct_reads >= 190, ra.stats


def test_failed_and_invalidated_chunks_are_not_returned() -> None:
    seg = Segment(random.randbytes(20 * CHUNK))
    ra = ReadAhead(seg.fetch, chunk=CHUNK, depth=4, budget=8)
    seg.fail = {3}
    for pos in range(0, 6 * CHUNK, 500):  # reaches chunk 3, whose read-ahead failed: read directly
        assert ra.read(1, pos, 500, seg.direct) == seg.data[pos:pos + 500]
    assert ra.stats["fallbacks"] >= 1
    seg.data[7 * CHUNK:7 * CHUNK + 4] = b"new!"  # chunk 7 was read ahead before this write...
    ra.invalidate(1, 7 * CHUNK, 4)  # ...which the backend reports, as RadosBackend.write_segment does
    assert ra.read(1, 7 * CHUNK, 8, seg.direct)[:4] == b"new!"
    del seg.data[9 * CHUNK:]  # a cut segment: nothing of it is served from before the cut
    ra.drop_segment(1)
    assert ra.read(1, 8 * CHUNK, 3 * CHUNK, seg.direct) == seg.data[8 * CHUNK:]
    ra.drain()
    assert ra.held() == 0 and ra.read(1, 0, 10, seg.direct) == seg.data[:10]
