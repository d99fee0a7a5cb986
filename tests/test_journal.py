"""The journal and the Store data path: round trips, replay, torn tails, group commit,
fault injection, trims, zero writes, volume events and on-disk corruption."""

from __future__ import annotations

import errno
import itertools
import os
import random
import subprocess
import sys
import textwrap
import threading

import pytest
from poolkit import (
    SEG,
    MiB,
    make_pool,
    seg_append,
    seg_create,
    seg_cut,
    seg_exists,
    seg_flip,
    seg_list,
    seg_path,
    seg_read,
    seg_size,
)

from vstor.errors import AlreadyExists, CorruptData, KeyError_, NotFound, PoolFull, UsageError, VstorError
from vstor.faults import Faults
from vstor.store.journal.format import (
    FRAME_SIZE,
    MAX_RECORD,
    REC_WRITE,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    loc_pos,
    loc_segno,
    make_loc,
    unpack_record_header,
)
from vstor.store.journal.segscan import ScanEnd
from vstor.store.store import Store

pytestmark = pytest.mark.usefixtures("pool_backend")  # each test on a local and a RADOS pool (tests/poolsite.py)


def record_of(store: Store, vid: int, offset: int) -> tuple[int, int]:
    """(segno, pos) of the record holding the byte at ``offset``."""
    ((_s, _e, loc),) = store.state.maps[vid].lookup(offset, offset + 1)
    return loc_segno(loc), loc_pos(loc)


def frame_data_pos(store: Store, segno: int, pos: int) -> int:
    header, _frames = store.journal.read_header(segno, pos)
    return pos + RECORD_HEADER_SIZE + header.table_size


def count_records(store: Store) -> int:
    segs = store.journal.segments()
    end = ScanEnd(segs[0], SEGMENT_HEADER_SIZE)
    n = sum(1 for _ in store.journal.scan(segs[0], SEGMENT_HEADER_SIZE, end))
    assert end.reason == ""
    return n


def mixed(rng: random.Random, n: int) -> bytes:
    """Random, compressible and all-zero stretches, not aligned to frames."""
    out = bytearray()
    while len(out) < n:
        kind = rng.randrange(3)
        k = rng.randrange(1, 3 * FRAME_SIZE)
        if kind == 0:
            out += rng.randbytes(k)
        elif kind == 1:
            out += (rng.randbytes(16) * (k // 16 + 1))[:k]
        else:
            out += bytes(k)
    out[0] |= 1  # never an all-zero write: these tests count records
    return bytes(out[:n])


def check_volume(store: Store, vid: int, model: bytearray, rng: random.Random, reads: int = 40) -> None:
    assert store.read(vid, 0, len(model)) == model
    for _ in range(reads):
        off = rng.randrange(len(model))
        size = rng.choice([1, 7, 4096, FRAME_SIZE + 3, rng.randrange(1, 3 * MiB)])
        assert store.read(vid, off, size) == model[off : off + size]


# -- round trips and replay ------------------------------------------------------------------

@pytest.mark.parametrize("compress,encrypt", list(itertools.product(["none", "lz4"], [False, True])))
def test_write_read_round_trip_and_replay(tmp_path, compress, encrypt):
    pool = make_pool(tmp_path, compress=compress, encrypt=encrypt)
    rng = random.Random(f"{compress}-{encrypt}")
    store = Store.open(pool)
    cs = store.sb.chunk_size
    size = 24 * MiB
    vid = store.create_volume("v", size).id
    model = bytearray(size)
    writes = [
        (1, 100),
        (FRAME_SIZE - 7, 20),  # across a frame boundary
        (cs - 3, 10),  # across a chunk boundary
        (3 * cs + 12345, 200_000),  # several frames and chunks
        (5 * MiB + 1, 9 * MiB + 333),  # split into three records
        (6 * MiB + 4097, 70_000),  # overwrite inside the big one
        (size - 5000, 5000),  # the very end
        (2 * cs - FRAME_SIZE, FRAME_SIZE),  # exactly one frame
    ]
    records = 1  # the volume create
    for off, n in writes:
        data = mixed(rng, n)
        store.write(vid, off, data)
        model[off : off + n] = data
        pieces = store.state.maps[vid].lookup(off, off + n)
        locs = {loc for _s, _e, loc in pieces}
        assert len(locs) == -(-n // MAX_RECORD)
        for loc in locs:
            h, _ = store.journal.read_header(loc_segno(loc), loc_pos(loc))
            assert h.rtype == REC_WRITE and h.volume == vid and 0 < h.length <= MAX_RECORD
        records += len(locs)
        assert store.read(vid, off, n) == data
    check_volume(store, vid, model, rng)
    assert store.read(vid, size - 10, 100) == model[-10:]  # clipped at the end
    assert store.read(vid, size, 100) == b""
    assert store.state.mapped_bytes() == store.volume_usage(vid) == sum(
        e - s for s, e, _ in store.state.maps[vid].lookup(0, size))
    store.sync()
    assert count_records(store) == records
    store.journal.close()  # crash-like: no checkpoint

    store = Store.open(pool)
    assert store.recovery["records"] == records
    assert store.recovery["torn_tail"] is None
    check_volume(store, vid, model, rng)
    store.close()
    store = Store.open(pool)  # from the checkpoint this time
    assert store.recovery["records"] == 0
    check_volume(store, vid, model, rng, reads=5)
    store.close()


def test_writes_roll_over_to_new_segments(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 40 * MiB).id
    data = os.urandom(36 * MiB)
    for off in range(0, len(data), MAX_RECORD):
        store.write(vid, off, data[off : off + MAX_RECORD])
    segs = store.journal.segments()
    assert len(segs) >= 3
    assert all(seg_size(pool, s) <= SEG for s in segs)
    assert store.read(vid, 0, len(data)) == data
    store.journal.close()
    store = Store.open(pool)
    assert store.read(vid, 0, len(data)) == data
    store.close()


# -- torn tails and corruption ---------------------------------------------------------------

@pytest.mark.parametrize("damage", ["garbage", "zeros", "truncated_copy", "short_header", "cut_last_record"])
def test_torn_tail_is_cut_at_recovery(tmp_path, damage):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 8 * MiB).id
    rng = random.Random(7)
    model = bytearray(8 * MiB)
    offsets = [0, MiB + 3, 3 * MiB + 5]
    for off in offsets:
        data = rng.randbytes(300_000)
        store.write(vid, off, data)
        model[off : off + len(data)] = data
    store.sync()
    segno, last_pos = record_of(store, vid, offsets[-1])
    assert segno == store.journal.current_segno
    good_size = store.journal.tail()[1]
    store.journal.close()
    assert seg_size(pool, segno) == good_size  # the window's unused space was cut

    last_record = seg_read(pool, segno, last_pos)  # the record, and padding after it on RADOS
    last_record = last_record[: unpack_record_header(last_record)[0].total_size]
    expect_end = good_size
    if damage == "cut_last_record":
        seg_cut(pool, segno, last_pos + len(last_record) // 2)
        expect_end = last_pos
        model[offsets[-1] : offsets[-1] + 300_000] = bytes(300_000)
    else:
        tail = {
            "garbage": rng.randbytes(5000),
            "zeros": bytes(4096),
            "truncated_copy": last_record[:-10],
            "short_header": last_record[:RECORD_HEADER_SIZE - 1],
        }[damage]
        seg_append(pool, segno, tail)

    store = Store.open(pool)
    torn = store.recovery["torn_tail"]
    if damage == "zeros":  # what a window allocated but never written leaves: cut, not reported
        assert torn is None
    else:
        assert torn is not None and torn["segment"] == segno and torn["offset"] == expect_end
    assert seg_size(pool, segno) == expect_end
    assert store.read(vid, 0, len(model)) == model
    # Appending resumes in a fresh segment, and the pool is clean from then on.
    assert store.journal.current_segno > segno
    store.write(vid, 7 * MiB, b"after")
    model[7 * MiB : 7 * MiB + 5] = b"after"
    store.sync()
    store.journal.close()
    store = Store.open(pool)
    assert store.recovery["torn_tail"] is None
    assert store.read(vid, 0, len(model)) == model
    store.close()


@pytest.mark.parametrize("content", [b"", b"VSTSEG01 torn", None])
def test_half_made_newest_segment_is_dropped(tmp_path, content):
    """A crash while a new segment file was being started leaves it empty or with a bad
    header and nothing after it; recovery drops the file and keeps everything before it."""
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 4 * MiB).id
    data = os.urandom(100_000)
    store.write(vid, 4096, data)
    store.sync()
    segno = store.journal.current_segno
    store.journal.close()
    header = seg_read(pool, segno, 0, SEGMENT_HEADER_SIZE)
    seg_create(pool, segno + 1, header if content is None else content)  # None: a valid header of another number
    store = Store.open(pool)
    torn = store.recovery["torn_tail"]
    assert torn is not None and torn["segment"] == segno + 1 and torn["offset"] == 0
    # The bad file is gone; appending resumes in a new segment whose number was never used.
    assert not seg_exists(pool, segno + 1)
    assert store.journal.current_segno == segno + 2
    assert store.read(vid, 4096, len(data)) == data
    store.close()


@pytest.mark.parametrize("where", ["frame", "header"])
def test_corrupt_record_in_older_segment_fails_open(tmp_path, where):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 32 * MiB).id
    data = os.urandom(20 * MiB)
    for off in range(0, len(data), MAX_RECORD):
        store.write(vid, off, data[off : off + MAX_RECORD])
    store.sync()
    segno, pos = record_of(store, vid, 0)
    assert segno < store.journal.current_segno  # an older, sealed segment
    target = frame_data_pos(store, segno, pos) + 12345 if where == "frame" else pos + 30
    store.journal.close()
    seg_flip(pool, segno, target)
    size_before = {s: seg_size(pool, s) for s in (segno, segno + 1)}
    with pytest.raises(CorruptData):
        Store.open(pool)
    # Nothing was cut: corruption is reported, never repaired silently.
    assert {s: seg_size(pool, s) for s in size_before} == size_before


@pytest.mark.parametrize("encrypt", [False, True])
def test_flipped_byte_on_disk_fails_the_read(tmp_path, encrypt):
    pool = make_pool(tmp_path, encrypt=encrypt)
    store = Store.open(pool)
    x = store.create_volume("x", 4 * MiB).id
    y = store.create_volume("y", 4 * MiB).id
    xdata, ydata = os.urandom(300_000), os.urandom(100_000)
    store.write(x, 0, xdata)
    store.write(y, 0, ydata)
    store.sync()
    segno, pos = record_of(store, x, 0)
    seg_flip(pool, segno, frame_data_pos(store, segno, pos) + 1000)  # inside frame 0
    with pytest.raises(CorruptData):
        store.read(x, 0, 4096)
    assert store.stats.read_errors == 1
    with pytest.raises(CorruptData):
        store.read(x, 0, len(xdata))
    assert store.stats.read_errors == 2
    # Frames that were not touched still verify, and so does the other volume.
    assert store.read(x, FRAME_SIZE, 100_000) == xdata[FRAME_SIZE : FRAME_SIZE + 100_000]
    assert store.read(y, 0, len(ydata)) == ydata
    assert store.stats.read_errors == 2
    store.close()
    store = Store.open(pool)  # headers are read from disk now, not from the cache
    with pytest.raises(CorruptData):
        store.read(x, 500, 1000)
    assert store.read(y, 0, len(ydata)) == ydata
    store.close()


@pytest.mark.parametrize("compress", ["none", "lz4"])
def test_read_names_the_bad_frame_in_a_multi_frame_range(tmp_path, compress):
    """Reads of frames stored as is are verified in one pass (CachedRecord.raw_csums); lz4 pools
    mix stored and compressed frames and take the per-frame path. Both give the same bytes and
    name the same bad frame, and frames before and after it still read."""
    pool = make_pool(tmp_path, compress=compress)
    store = Store.open(pool)
    x = store.create_volume("x", 4 * MiB).id
    data = bytearray(os.urandom(8 * FRAME_SIZE))
    data[2 * FRAME_SIZE : 3 * FRAME_SIZE] = bytes(FRAME_SIZE // 2) + b"z" * (FRAME_SIZE // 2)  # compressible
    store.write(x, 0, bytes(data))
    store.sync()
    assert store.read(x, 100, 5 * FRAME_SIZE) == data[100 : 100 + 5 * FRAME_SIZE]
    segno, pos = record_of(store, x, 0)
    assert (store._header(make_loc(segno, pos)).raw_csums is None) == (compress == "lz4")
    seg_flip(pool, segno, frame_data_pos(store, segno, pos) + 5 * FRAME_SIZE - 6)
    bad = 4 if compress == "none" else 5  # frame 2 is stored compressed, so later frames sit earlier
    with pytest.raises(CorruptData, match=f"checksum mismatch in frame {bad} of volume"):
        store.read(x, FRAME_SIZE + 3, 6 * FRAME_SIZE)
    assert store.read(x, 0, 4 * FRAME_SIZE - 100) == data[: 4 * FRAME_SIZE - 100]
    assert store.read(x, 6 * FRAME_SIZE, 2 * FRAME_SIZE) == data[6 * FRAME_SIZE :]
    assert store.stats.read_errors == 1
    store.close()


@pytest.mark.parametrize("kind", ["none", "lz4", "aes"])
def test_read_into_gives_the_bytes_of_read_and_never_unverified_data(tmp_path, kind):
    """Store.read_into (FUSE reads fill libfuse's buffer with it) returns what read() returns,
    across gaps, fragments and partial frames. Whole frames stored as is go straight into the
    buffer and are verified there; a flipped byte in one of them fails the read."""
    pool = make_pool(tmp_path, compress="lz4" if kind == "lz4" else "none", encrypt=kind == "aes")
    store = Store.open(pool)
    size = 6 * MiB
    x = store.create_volume("x", size).id
    rng = random.Random(kind)
    model = bytearray(size)
    store.write(x, MiB, rng.randbytes(2 * MiB))  # whole frames stored as is (random bytes)
    model[MiB : 3 * MiB] = store.read(x, MiB, 2 * MiB)
    for _ in range(40):
        off, n = rng.randrange(size - 70_000), rng.randrange(1, 70_000)
        data = rng.randbytes(n) if rng.random() < 0.8 else bytes(n)  # zeros: a trim
        store.write(x, off, data)
        model[off : off + n] = data
    direct = []
    real = store.journal.pread_into
    store.journal.pread_into = lambda *a: direct.append(a[0]) or real(*a)  # observe which path ran
    spans = [(0, size), (MiB, FRAME_SIZE), (3 * MiB - 2 * FRAME_SIZE, 2 * FRAME_SIZE), (size - 5, 100)]
    spans += [(rng.randrange(size), rng.randrange(1, 3 * MiB)) for _ in range(30)]
    for off, n in spans:
        buf = bytearray(b"\xee" * n)
        got = store.read_into(x, off, memoryview(buf))
        assert got == min(n, size - off)
        assert bytes(buf[:got]) == store.read(x, off, n) == model[off : off + got]
    assert bool(direct) == (kind != "aes")  # lz4 stores incompressible frames as is
    # A whole raw frame with a flipped byte, read straight into the buffer: CorruptData.
    store.write(x, 4 * MiB, rng.randbytes(4 * FRAME_SIZE))
    store.sync()
    segno, pos = record_of(store, x, 4 * MiB)
    seg_flip(pool, segno, frame_data_pos(store, segno, pos) + FRAME_SIZE + 1000)  # frame 1
    errors = store.stats.read_errors
    for off, n in ((4 * MiB + FRAME_SIZE, FRAME_SIZE), (4 * MiB, 4 * FRAME_SIZE), (4 * MiB + 10, 100_000)):
        with pytest.raises(CorruptData, match="frame 1 of volume"):
            store.read_into(x, off, memoryview(bytearray(n)))
    assert store.stats.read_errors == errors + 3
    buf = bytearray(FRAME_SIZE)
    store.read_into(x, 4 * MiB + 2 * FRAME_SIZE, memoryview(buf))  # the frames around it still read
    assert bytes(buf) == store.read(x, 4 * MiB + 2 * FRAME_SIZE, FRAME_SIZE)
    store.close()


def test_encrypted_pool_wrong_key_is_refused(tmp_path):
    pool = make_pool(tmp_path, encrypt=True)
    store = Store.open(pool)  # the superblock's key file hint
    vid = store.create_volume("v", MiB).id
    store.write(vid, 10, b"secret")
    store.close()
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    with pytest.raises(KeyError_):
        Store.open(pool, key_file=str(wrong))
    short = tmp_path / "short.key"
    short.write_bytes(os.urandom(16))
    with pytest.raises(KeyError_):
        Store.open(pool, key_file=str(short))
    store = Store.open(pool, key_file=str(tmp_path / "key"))
    assert store.read(vid, 10, 6) == b"secret"
    store.close()
    # The payload is not on disk in the clear.
    blob = b"".join(seg_read(pool, s) for s in seg_list(pool))
    assert b"secret" not in blob


# -- group commit ----------------------------------------------------------------------------

def test_group_commit_shares_fdatasync(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 16 * MiB).id
    nthreads, nwrites, nsyncs = 8, 25, 10
    errors: list[BaseException] = []
    barrier = threading.Barrier(nthreads + 1)
    syncs_after_writes = []

    def worker(t: int) -> None:
        try:
            for i in range(nwrites):
                store.write(vid, (t * nwrites + i) * 8192 + t, bytes([t + 1]) * 5000)
            barrier.wait()
            barrier.wait()  # the main thread reads the counter in between
            for _ in range(nsyncs):
                store.sync()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(nthreads)]
    for th in threads:
        th.start()
    barrier.wait()
    assert store.journal.dirty()
    syncs_after_writes.append(store.journal.syncs)
    barrier.wait()
    for th in threads:
        th.join()
    assert not errors
    done = store.journal.syncs - syncs_after_writes[0]
    assert 1 <= done <= nthreads, f"{done} fdatasyncs for {nthreads * nsyncs} sync calls"
    assert store.journal.durable_position() == store.journal.tail()
    assert not store.journal.dirty()
    for t in range(nthreads):
        for i in range(nwrites):
            off = (t * nwrites + i) * 8192 + t
            assert store.read(vid, off, 5000) == bytes([t + 1]) * 5000
    store.close()


def test_sync_covers_every_write_that_returned_before_it(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 16 * MiB).id
    nthreads, rounds = 6, 30
    errors: list[BaseException] = []
    calls = 0
    lock = threading.Lock()

    def worker(t: int) -> None:
        nonlocal calls
        try:
            for i in range(rounds):
                store.write(vid, (t * rounds + i) * 4096, os.urandom(4096))
                seen = store.journal.tail()
                store.sync()
                assert store.journal.durable_position() >= seen
                with lock:
                    calls += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    before = store.journal.syncs
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert calls == nthreads * rounds
    assert store.journal.syncs - before <= calls
    assert store.journal.durable_position() == store.journal.tail()
    store.close()


# -- small records through the mapped window -------------------------------------------------

def _file_size(store: Store) -> int:
    return os.stat(seg_path(store.pool, store.journal.current_segno)).st_size


def _file_bytes(store: Store, pos: int, size: int) -> bytes:
    with open(seg_path(store.pool, store.journal.current_segno), "rb") as f:
        f.seek(pos)
        return f.read(size)


@pytest.mark.local_only("small records go through a mapped window of a local segment file")
def test_small_records_are_in_the_segment_file_when_write_returns(tmp_path):
    """A small record is stored through the mapped window, so another reader of the file sees
    it at once, without a sync; the allocated space after the tail is cut when the segment is
    sealed, and a large record (written with pwritev) lands between small ones."""
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 64 * MiB).id
    blocks = [os.urandom(4096) for _ in range(10)]
    for i, b in enumerate(blocks):
        store.write(vid, i * 8192, b)
        segno, pos = record_of(store, vid, i * 8192)
        assert _file_bytes(store, frame_data_pos(store, segno, pos), 4096) == b
    tail = store.journal.tail()[1]
    assert _file_size(store) > tail, "the window's space should be allocated past the tail"
    assert _file_bytes(store, tail, 1 << 20).strip(b"\0") == b""
    big = os.urandom(200_000)
    store.write(vid, 8 * MiB, big)
    store.write(vid, 0, os.urandom(9))
    assert count_records(store) >= 13  # a scan of the live segment stops at the tail
    final = store.journal.tail()
    store.close()
    assert os.path.getsize(seg_path(pool, final[0])) == final[1]
    store = Store.open(pool)
    assert store.recovery["torn_tail"] is None
    assert store.read(vid, 8 * MiB, len(big)) == big
    assert store.read(vid, 9 * 8192, 4096) == blocks[9]
    store.close()


@pytest.mark.local_only("unsynced records outlive the process in a local file's page cache; on RADOS only "
                        "synced writes are promised (aio writes in flight die with the client)")
def test_records_written_without_a_sync_survive_kill9(tmp_path):
    """The process dies right after its writes returned, with no sync: nothing it wrote is lost
    (the records are in the page cache), and the unwritten space it had allocated is cut at
    recovery without being mistaken for a torn tail."""
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 64 * MiB).id
    store.close()
    script = textwrap.dedent(f"""
        import os, random
        from vstor.store.store import Store
        store = Store.open({str(pool)!r})
        rng = random.Random(5)
        for i in range(1500):  # spans window moves (4 MiB each)
            store.write({vid}, rng.randrange(16 * 1024) * 4096, rng.randbytes(4096))
        store.write({vid}, 0, rng.randbytes(300_000))
        store.write({vid}, 600_000, rng.randbytes(5000))
        os.kill(os.getpid(), 9)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    rng = random.Random(5)
    model = bytearray(64 * MiB)
    for _ in range(1500):
        off = rng.randrange(16 * 1024) * 4096
        model[off : off + 4096] = rng.randbytes(4096)
    model[0:300_000] = rng.randbytes(300_000)
    model[600_000:605_000] = rng.randbytes(5000)
    store = Store.open(pool)
    assert store.recovery["torn_tail"] is None
    assert store.recovery["records"] >= 1502
    assert store.read(vid, 0, 64 * MiB) == bytes(model)
    for segno in store.journal.segments()[:-1]:  # every sealed segment ends at its last record
        end = ScanEnd(segno, SEGMENT_HEADER_SIZE)
        for _ in store.journal._scan_segment(segno, SEGMENT_HEADER_SIZE, end, None):
            pass
        assert (end.reason, end.unwritten) == ("", False)
        assert os.path.getsize(seg_path(pool, segno)) == end.pos
    store.close()


@pytest.mark.local_only("posix_fallocate of a local segment's window")
def test_enospc_allocating_the_window_is_pool_full_and_loses_nothing(tmp_path, monkeypatch):
    """The window's blocks are allocated before it is mapped: a full filesystem is a PoolFull
    for the write that needed it (never a SIGBUS), and the journal stays usable."""
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 64 * MiB).id
    a = os.urandom(4096)
    store.write(vid, 0, a)
    tail = store.journal.tail()
    real = os.posix_fallocate

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(PoolFull):
        for i in range(2000):  # 8 MiB of small records: the window must move
            store.write(vid, (i % 1000) * 4096 + 4096, os.urandom(4096))
    assert store.journal.failed is None
    monkeypatch.setattr(os, "posix_fallocate", real)
    store.write(vid, 8 * MiB, b"y" * 100)
    store.sync()
    assert store.journal.tail() > tail
    store.journal.close()
    store = Store.open(pool)
    assert store.read(vid, 0, 4096) == a
    assert store.read(vid, 8 * MiB, 100) == b"y" * 100
    store.close()


# -- fault injection -------------------------------------------------------------------------

def test_enospc_on_journal_write(tmp_path):
    pool = make_pool(tmp_path)
    faults = Faults("journal.write=enospc@3")  # 1: volume create, 2: first write, 3: second write
    store = Store.open(pool, faults=faults)
    vid = store.create_volume("v", 4 * MiB).id
    a, b, c = os.urandom(100_000), os.urandom(200_000), os.urandom(50_000)
    store.write(vid, 0, a)
    store.sync()
    tail = store.journal.tail()
    with pytest.raises(PoolFull):
        store.write(vid, MiB, b)
    assert store.journal.tail() == tail
    assert seg_read(pool, tail[0], tail[1]).strip(b"\0") == b""  # nothing of the record reached the segment
    assert store.journal.failed is None
    assert store.read(vid, 0, len(a)) == a
    assert store.read(vid, MiB, len(b)) == bytes(len(b))
    assert store.volume_usage(vid) == len(a)
    _resume_if_suspended(store)
    store.write(vid, 2 * MiB, c)  # the fault fired once; the pool keeps working
    store.sync()
    store.journal.close()
    store = Store.open(pool)
    assert store.recovery["torn_tail"] is None
    assert store.recovery["records"] == 3
    assert store.read(vid, 0, len(a)) == a
    assert store.read(vid, MiB, len(b)) == bytes(len(b))
    assert store.read(vid, 2 * MiB, len(c)) == c
    store.close()


def _fill_segment_one(store: Store, vid: int, model: bytearray) -> None:
    for i in range(3):  # 12 MiB of a 16 MiB segment
        data = os.urandom(MAX_RECORD)
        store.write(vid, i * MAX_RECORD, data)
        model[i * MAX_RECORD : (i + 1) * MAX_RECORD] = data
    assert store.journal.current_segno == 1


def _resume_if_suspended(store: Store) -> int:
    """A full RADOS pool suspends the journal until the storage takes a probe write again (the
    daemon's OutageWatch calls resume_after_outage once a second), and the resume seals the
    segment and starts the next; a full local disk fails only the one write. Returns how many
    segments the resume started (0 or 1)."""
    suspended = store.journal.outage is not None
    assert suspended == (store.backend.describe().startswith("rados://"))
    return 1 if store.resume_after_outage() is not None else 0


def _check_rollover_failure_recovers(pool: str, store: Store, vid: int, model: bytearray) -> None:
    tail = store.journal.tail()
    with pytest.raises(PoolFull):
        store.write(vid, 3 * MAX_RECORD, os.urandom(MAX_RECORD))  # needs a new segment
    assert store.journal.failed is None
    assert store.journal.tail() == tail
    assert store.read(vid, 0, len(model)) == model
    resumed = _resume_if_suspended(store)
    data = os.urandom(MAX_RECORD)
    store.write(vid, 3 * MAX_RECORD, data)  # the retry gets its segment
    model[3 * MAX_RECORD : 4 * MAX_RECORD] = data
    assert store.journal.current_segno == 2 + resumed
    store.sync()
    store.journal.close()
    store = Store.open(pool)
    assert store.recovery["torn_tail"] is None
    assert store.read(vid, 0, len(model)) == model
    store.close()


@pytest.mark.local_only("on RADOS a full pool suspends the journal, reads of what was written since the last "
                        "sync wait for the resume, which drops it (docs/architecture.md, 'Faults on RADOS'); "
                        "test_rados_faults.py covers a full pool end to end")
def test_enospc_at_segment_rollover(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool, faults=Faults("journal.rollover=enospc"))
    vid = store.create_volume("v", 32 * MiB).id
    model = bytearray(32 * MiB)
    _fill_segment_one(store, vid, model)
    _check_rollover_failure_recovers(pool, store, vid, model)


@pytest.mark.local_only("a full local disk under os.pwrite of a new segment file")
def test_enospc_writing_a_new_segment_header(tmp_path, monkeypatch):
    """The disk fills up just as a new segment file is created: the half-made segment must
    not block every later rollover."""
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 32 * MiB).id
    model = bytearray(32 * MiB)
    _fill_segment_one(store, vid, model)
    real_pwrite = os.pwrite
    failures = []

    def full_disk_once(fd: int, data: bytes, pos: int) -> int:
        if pos == 0 and not failures:  # the header of a new segment file
            failures.append(fd)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, pos)

    monkeypatch.setattr(os, "pwrite", full_disk_once)
    _check_rollover_failure_recovers(pool, store, vid, model)
    assert failures


def test_full_filesystem_stops_writes_but_not_trims(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 8 * MiB).id
    data = os.urandom(MiB)
    store.write(vid, 0, data)
    store.sync()
    # Pretend the filesystem has only the reserve left.
    store.space.reserve = store.space.refresh()
    with pytest.raises(PoolFull):
        store.write(vid, 2 * MiB, os.urandom(4096))
    assert store.stats.enospc == 1
    assert store.journal.failed is None
    store.trim(vid, 0, 4096)  # trims may use the reserve, to free space
    assert store.read(vid, 0, MiB) == bytes(4096) + data[4096:]
    assert store.volume_usage(vid) == MiB - 4096
    store.space.reserve = 0
    store.write(vid, 2 * MiB, b"room again")
    assert store.read(vid, 2 * MiB, 10) == b"room again"
    store.close()


@pytest.mark.parametrize("point", ["journal.sync", "journal.write", pytest.param(
    "journal.writeback", marks=pytest.mark.local_only("the early writeback (sync_file_range) of a local file"))])
def test_eio_puts_the_journal_in_failed_state(tmp_path, point):
    """A write error reported by fdatasync, by a write, or by the early writeback that the
    journal starts every WRITEBACK_BYTES (8 MiB) fails the journal for good."""
    pool = make_pool(tmp_path)
    faults = Faults()
    store = Store.open(pool, faults=faults)
    vid = store.create_volume("v", 16 * MiB).id
    a = os.urandom(100_000)
    store.write(vid, 0, a)
    store.sync()
    faults.arm(point, "eio")
    with pytest.raises(VstorError) as info:
        for k in range(9 if point == "journal.writeback" else 1):  # 9 MiB: past WRITEBACK_BYTES
            store.write(vid, MiB + k * MiB, os.urandom(MiB) if point == "journal.writeback" else b"x" * 5000)
        store.sync()
    assert not isinstance(info.value, PoolFull)
    assert store.journal.failed
    faults.disarm()
    # Everything that writes is refused now, even with the fault gone.
    with pytest.raises(VstorError):
        store.write(vid, 2 * MiB, b"y" * 100)
    with pytest.raises(VstorError):
        store.sync()
    with pytest.raises(VstorError):
        store.trim(vid, 0, 4096)
    with pytest.raises(VstorError):
        store.create_volume("w", MiB)
    assert store.read(vid, 0, len(a)) == a  # reads still work
    store.close()  # no checkpoint from a failed journal
    store = Store.open(pool)
    assert store.read(vid, 0, len(a)) == a
    store.write(vid, 3 * MiB, b"z" * 10)
    store.sync()
    assert store.read(vid, 3 * MiB, 10) == b"z" * 10
    store.close()


@pytest.mark.local_only("sync_file_range on a local file; no pool")
def test_start_writeback_starts_io_and_reports_errors(tmp_path):
    from vstor.durable import start_writeback

    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, os.urandom(MiB), 0)
        start_writeback(fd, 0, MiB)  # no error, no wait
        start_writeback(fd, 0, 0)  # nothing to do
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        start_writeback(fd, 0, MiB)  # closed: EBADF is an error, not a silent no-op
    assert info.value.errno == errno.EBADF


# -- trims and zero writes -------------------------------------------------------------------

def test_trim_reads_zeros_and_frees(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 8 * MiB).id
    model = bytearray(8 * MiB)
    mapped = bytearray(8 * MiB)  # 1 where a byte references a record
    data = os.urandom(3 * MiB)
    store.write(vid, 100, data)
    model[100 : 100 + len(data)] = data
    mapped[100 : 100 + len(data)] = b"\x01" * len(data)
    assert store.state.mapped_bytes() == len(data)
    trims = [(5000, 70_001), (MiB - 1, MiB + 2), (3 * MiB, 10 * MiB)]  # the last runs past the end
    for off, n in trims:
        end = min(off + n, len(model))
        before = store.state.mapped_bytes()
        store.trim(vid, off, n)
        model[off:end] = bytes(end - off)
        mapped[off:end] = bytes(end - off)
        assert store.state.mapped_bytes() == mapped.count(1) < before
        assert store.read(vid, off, end - off) == bytes(end - off)
    assert store.read(vid, 0, len(model)) == model
    assert store.stats.trims == len(trims)
    assert store.stats.trim_bytes == sum(min(off + n, len(model)) - off for off, n in trims)
    # Trimming what is already unmapped writes nothing (the request is still counted).
    appended, trim_bytes = store.journal.appended_bytes, store.stats.trim_bytes
    store.trim(vid, 6 * MiB, MiB)
    store.trim(vid, 5000, 1000)
    assert store.journal.appended_bytes == appended
    assert store.stats.trims == len(trims) + 2
    assert store.stats.trim_bytes == trim_bytes
    store.sync()
    store.journal.close()
    store = Store.open(pool)
    assert store.read(vid, 0, len(model)) == model
    assert store.state.mapped_bytes() == mapped.count(1)
    store.close()


def test_long_trims_survive_replay(tmp_path):
    """Trims longer than one record (4 MiB), and longer than 4 GiB, are journaled so that
    replay accepts them and keeps the records written after them."""
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    size = 8 << 30
    vid = store.create_volume("v", size).id
    keep = os.urandom(4096)
    for off in (0, 3 * MiB, 9 * MiB + 7, 5 << 30):
        store.write(vid, off, os.urandom(200_000))
    store.write(vid, size - 4096, keep)
    store.trim(vid, 1, 20 * MiB)  # 20 MiB, four pieces hold data
    store.trim(vid, 4 << 30, size - (4 << 30) - 4096)  # over 4 GiB long, one piece holds data
    after = os.urandom(10_000)
    store.write(vid, 100 * MiB, after)  # must not be lost behind the trims
    assert store.volume_usage(vid) == 1 + len(keep) + len(after)
    store.sync()
    store.journal.close()
    store = Store.open(pool)
    assert store.recovery["torn_tail"] is None
    assert store.volume_usage(vid) == 1 + len(keep) + len(after)
    assert store.read(vid, 1, 20 * MiB) == bytes(20 * MiB)
    assert store.read(vid, (5 << 30) - 10, 300_000) == bytes(300_000)
    assert store.read(vid, size - 4096, 4096) == keep
    assert store.read(vid, 100 * MiB, len(after)) == after
    store.close()


@pytest.mark.parametrize("encrypt", [False, True])
def test_all_zero_writes_allocate_nothing(tmp_path, encrypt):
    pool = make_pool(tmp_path, encrypt=encrypt)
    store = Store.open(pool)
    vid = store.create_volume("v", 16 * MiB).id
    appended = store.journal.appended_bytes
    store.write(vid, 12345, bytes(5 * MiB))  # two records' worth of zeros
    assert store.stats.zero_writes == 2
    assert store.state.mapped_bytes() == 0
    assert store.journal.appended_bytes == appended
    assert store.state.maps[vid].leaves == {}
    # Zeros over data act as a trim.
    data = os.urandom(MiB)
    store.write(vid, 8 * MiB, data)
    store.write(vid, 8 * MiB + 4096, bytes(8192))
    assert store.stats.zero_writes == 3
    assert store.state.mapped_bytes() == MiB - 8192
    want = bytearray(data)
    want[4096 : 4096 + 8192] = bytes(8192)
    assert store.read(vid, 8 * MiB, MiB) == want
    # A write that is mostly zero frames stores only its non-zero frames.
    appended = store.journal.appended_bytes
    sparse = os.urandom(1000) + bytes(10 * FRAME_SIZE) + os.urandom(1000)
    store.write(vid, 2 * MiB, sparse)
    assert store.journal.appended_bytes - appended < 4 * FRAME_SIZE
    assert store.read(vid, 2 * MiB, len(sparse)) == sparse
    store.sync()
    store.journal.close()
    store = Store.open(pool)
    assert store.read(vid, 8 * MiB, MiB) == want
    assert store.read(vid, 2 * MiB, len(sparse)) == sparse
    assert store.read(vid, 0, 2 * MiB) == bytes(2 * MiB)
    store.close()


def test_write_outside_the_volume_is_refused(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    vid = store.create_volume("v", 8 * MiB).id
    appended = store.journal.appended_bytes
    with pytest.raises(UsageError):
        store.write(vid, 8 * MiB - 10, b"x" * 11)
    with pytest.raises(UsageError):
        store.write(vid, 0, os.urandom(9 * MiB))  # split into records: none may land
    with pytest.raises(UsageError):
        store.write(vid, 8 * MiB, bytes(4096))  # zeros too
    with pytest.raises(UsageError):
        store.write(vid, -1, b"x")
    with pytest.raises(UsageError):
        store.write(vid + 1, 0, b"x")
    assert store.journal.appended_bytes == appended
    assert store.state.mapped_bytes() == 0
    store.close()


# -- volumes ---------------------------------------------------------------------------------

def test_volume_events_survive_replay_and_ids_are_not_reused(tmp_path):
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    a = store.create_volume("a", 16 * MiB)
    b = store.create_volume("b", 8 * MiB)
    assert (a.id, b.id) == (1, 2)
    with pytest.raises(AlreadyExists):
        store.create_volume("a", MiB)
    adata, bdata = os.urandom(2 * MiB), os.urandom(8 * MiB)
    store.write(a.id, 0, adata)
    store.write(b.id, 0, bdata)
    store.resize_volume("a", 32 * MiB)
    store.write(a.id, 20 * MiB, b"grown")
    with pytest.raises(UsageError):
        store.resize_volume("b", 4 * MiB)
    assert store.volume("b").size == 8 * MiB
    store.resize_volume("b", 4 * MiB, allow_shrink=True)
    assert store.volume_usage(b.id) == 4 * MiB
    store.resize_volume("b", 8 * MiB)  # grow again: the old tail must not come back
    assert store.read(b.id, 0, 8 * MiB) == bdata[: 4 * MiB] + bytes(4 * MiB)
    store.delete_volume("a")
    assert sum(store.state.live.values()) == store.state.mapped_bytes() == 4 * MiB
    c = store.create_volume("c", MiB)
    assert c.id == 3
    with pytest.raises(UsageError):
        store.read(a.id, 0, 10)
    store.sync()
    store.journal.close()

    def check(st: Store) -> None:
        assert [(v.name, v.id, v.size) for v in st.volumes()] == [("b", 2, 8 * MiB), ("c", 3, MiB)]
        with pytest.raises(NotFound):
            st.volume("a")
        assert st.read(b.id, 0, 8 * MiB) == bdata[: 4 * MiB] + bytes(4 * MiB)
        assert st.volume_usage(b.id) == 4 * MiB
        assert sum(st.state.live.values()) == st.state.mapped_bytes() == 4 * MiB
        assert 1 not in st.state.maps

    store = Store.open(pool)  # replay
    assert store.recovery["records"] > 0
    check(store)
    assert store.create_volume("d", MiB).id == 4
    store.delete_volume("d")
    store.close()  # checkpoint
    store = Store.open(pool)
    assert store.recovery["records"] == 0
    check(store)
    assert store.create_volume("e", MiB).id == 5  # 4 was deleted, and is not reused either
    # The same name again gets a new id and starts empty.
    store.delete_volume("c")
    c2 = store.create_volume("c", MiB)
    assert c2.id == 6 and store.read(c2.id, 0, MiB) == bytes(MiB)
    store.close()
