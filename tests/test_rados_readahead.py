"""Read-ahead of journal segments on RADOS (vstor/store/backend/readahead.py, rados/read.py):
sequential reads across stripe and segment boundaries return the bytes written, a write
issued after chunks were read ahead is seen, a cut segment reads short, and a damaged frame is
still reported (CorruptData), never returned. Needs the session's Ceph cluster (make test-rados)."""

from __future__ import annotations

import os
import random

import pytest
from cephlab import CLIENT_TIMEOUT, TEST_POOL, CephLab

from vstor.errors import CorruptData
from vstor.store.backend.location import open_backend, parse_rados
from vstor.store.backend.readahead import BUDGET, CHUNK
from vstor.store.journal.format import SEGMENT_HEADER_SIZE
from vstor.store.store import Store
from vstor.store.superblock import init_backend_pool

pytestmark = pytest.mark.rados
MiB = 1 << 20
HDR = b"H" * SEGMENT_HEADER_SIZE



@pytest.fixture(autouse=True)
def _readahead_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The read-ahead is off by default (rados.read.make_readahead): these tests turn it on."""
    monkeypatch.setenv("VSTOR_RADOS_READAHEAD", "1")

def _backend(lab: CephLab, location: str):  # noqa: ANN202
    be = open_backend(location, ceph_conf=str(lab.conf), timeout=CLIENT_TIMEOUT)
    assert be.readahead is not None, "the read-ahead is on only with VSTOR_RADOS_READAHEAD=1 (the autouse fixture)"
    return be


def _read_all(be, segno: int, start: int, step: int) -> bytes:  # noqa: ANN001
    out, pos = [], start
    while True:
        got = be.read_segment(segno, pos, step)
        if not got:
            return b"".join(out)
        out.append(got)
        pos += len(got)


def test_sequential_reads_across_stripes_use_readahead_and_match(ceph_lab: CephLab, rados_location: str) -> None:
    rng = random.Random(29)
    data = HDR + rng.randbytes(11 * MiB + 12345)  # three stripes of 4 MiB, the last partly filled
    be = _backend(ceph_lab, rados_location)
    try:
        be.create_segment(1, HDR)
        for pos in range(len(HDR), len(data), 300_001):  # odd sizes: writes straddle chunks and stripes
            be.write_segment(1, pos, data[pos:pos + 300_001])
        be.flush_segment(1)
        ra = be.readahead
        assert _read_all(be, 1, len(HDR), 200_003) == data[len(HDR):]
        assert ra.stats["fetched"] >= len(data) // CHUNK and ra.stats["chunked"] > ra.stats["direct"], ra.stats
        assert ra.held() <= BUDGET
        # one request over the stripe boundary, its chunks read in parallel
        a = 4 * MiB - 100
        assert be.read_segment(1, a, 3 * MiB) == data[a:a + 3 * MiB]
        assert be.read_segment(1, len(data) - 10, MiB) == data[-10:]  # short at the end, as without read-ahead
        assert be.read_segment(1, len(data) + 5 * MiB, MiB) == b""  # past the last stripe
        with pytest.raises(FileNotFoundError):
            be.read_segment(2, 0, 3 * MiB)
    finally:
        be.close()


def test_a_write_after_read_ahead_is_seen_and_a_cut_reads_short(ceph_lab: CephLab, rados_location: str) -> None:
    rng = random.Random(30)
    first, more = rng.randbytes(MiB + MiB // 2), rng.randbytes(3 * MiB)
    be = _backend(ceph_lab, rados_location)
    try:
        be.create_segment(3, HDR)
        be.write_segment(3, len(HDR), first)
        be.flush_segment(3)
        end = len(HDR) + len(first)
        # sequential reads up to the tail: chunks past it are read ahead (short or empty)
        assert _read_all(be, 3, len(HDR), 256 * 1024) == first
        fetched = be.readahead.stats["fetched"]
        assert fetched * CHUNK > end + 2 * CHUNK, be.readahead.stats
        be.write_segment(3, end, more)  # not flushed: reads after the return must see it
        assert be.read_segment(3, end - 100, len(more) + 100) == first[-100:] + more
        assert _read_all(be, 3, len(HDR), 256 * 1024) == first + more
        be.flush_segment(3)
        be.truncate_segment(3, end)  # recovery cutting a torn tail: the chunks read ahead go too
        assert be.read_segment(3, len(HDR), 8 * MiB) == first
        be.delete_segment(3)
        with pytest.raises(FileNotFoundError):
            be.read_segment(3, 0, 2 * MiB)
    finally:
        be.close()


def _open(lab: CephLab, location: str, state) -> Store:  # noqa: ANN001
    (state / "meta").mkdir(parents=True, exist_ok=True)
    return Store.open(str(state), backend=_backend(lab, location))


def test_volume_reads_over_segments_and_a_damaged_frame_is_reported(ceph_lab: CephLab, rados_location: str,
                                                                     tmp_path) -> None:
    with open_backend(rados_location, ceph_conf=str(ceph_lab.conf), timeout=CLIENT_TIMEOUT) as be:
        init_backend_pool(be, segment_size=16 * MiB)  # the smallest: 20 MiB of data spans two segments
    data = os.urandom(20 * MiB)
    store = _open(ceph_lab, rados_location, tmp_path / "state")
    try:
        vid = store.create_volume("v", 24 * MiB).id
        for off in range(0, len(data), MiB):
            store.write(vid, off, data[off:off + MiB])
        store.sync()
        full = [s for s in store.backend.list_segments() if store.backend.segment_size(s) > MiB]
        assert len(full) >= 2  # the data spans a segment boundary
    finally:
        store.close()
    store = _open(ceph_lab, rados_location, tmp_path / "state")  # cold: nothing cached
    try:
        got = b"".join(bytes(store.read(vid, off, MiB)) for off in range(0, len(data), MiB))
        assert got == data
        assert store.backend.readahead.stats["fetched"] > 20, store.backend.readahead.stats
    finally:
        store.close()
    # damage 8 bytes inside the frames of the first data segment's second stripe, behind vstor's back
    import rados
    loc = parse_rados(rados_location)
    cluster = rados.Rados(conffile=str(ceph_lab.conf), conf={"rados_osd_op_timeout": str(CLIENT_TIMEOUT)})
    cluster.connect(timeout=CLIENT_TIMEOUT)
    try:
        with cluster.open_ioctx(TEST_POOL) as io:
            io.set_namespace(f"{loc.prefix}/journal")
            from vstor.store.backend.rados.backend import RadosBackend
            io.write(RadosBackend.stripe_name(full[0], 1), b"\xde\xad\xbe\xef" * 2, 123_456)
    finally:
        cluster.shutdown()
    store = _open(ceph_lab, rados_location, tmp_path / "state")
    try:
        bad = []
        for off in range(0, len(data), MiB):
            try:
                piece = bytes(store.read(vid, off, MiB))
            except CorruptData:
                bad.append(off)
                continue
            assert piece == data[off:off + MiB], f"wrong bytes returned at {off}"
        assert len(bad) == 1 and 3 * MiB <= bad[0] <= 5 * MiB, bad  # the 1 MiB write at about 4 MiB
        assert store.backend.readahead.stats["fetched"] > 0
    finally:
        store.close()
