"""A large read's whole small records served in one pass (vstor/store/reads/pieces.py): which
pieces it takes, that it leaves everything else (and anything it cannot read or verify) to the
general path, and that a read of many pieces returns the same bytes and reports the same damage
whichever serves them."""

from __future__ import annotations

import os
import random

import pytest
from poolkit import MiB, evict_segments, make_pool, seg_flip
from poolsite import active

from vstor.errors import CorruptData
from vstor.store.journal.format import loc_pos, loc_segno
from vstor.store.reads.pieces import serve_whole
from vstor.store.store import Store

pytestmark = pytest.mark.usefixtures("pool_backend")  # each test on a local and a RADOS pool (tests/poolsite.py)

SIZE = 2 * MiB
SMALLS = [(k * 37 + 5) * 4096 for k in range(12)]  # 4 KiB overwrites, scattered over the first 2 MiB
ODD = (MiB + 100_000, 1000)  # a record of one frame that is not whole blocks
EIGHT = (MiB + (200 << 10), 8192)  # a record of one frame with block sums
CUT = (MiB + (500 << 10), 4096)  # a 4 KiB record, then half overwritten


def _aged(tmp_path, **opts) -> tuple[str, Store, int, bytearray]:
    """A pool with a 2 MiB volume written in 1 MiB records, then overwritten by the records
    above; the model of its bytes."""
    pool = make_pool(tmp_path, **opts)
    st = Store.open(pool, key_file=str(tmp_path / "key") if opts.get("encrypt") else None)
    vid = st.create_volume("v", SIZE).id
    model = bytearray(SIZE)

    def put(off: int, data: bytes) -> None:
        st.write(vid, off, data)
        model[off : off + len(data)] = data

    for off in range(0, SIZE, MiB):
        put(off, os.urandom(MiB))
    for off in SMALLS:
        put(off, os.urandom(4096))
    put(ODD[0], os.urandom(ODD[1]))
    put(EIGHT[0], os.urandom(EIGHT[1]))
    put(CUT[0], os.urandom(CUT[1]))
    put(CUT[0] + 2048, os.urandom(4096))
    st.sync()
    return pool, st, vid, model


def _serve(st: Store, vid: int, view: memoryview) -> tuple[list, list, set]:
    """(pieces of the whole volume, pieces serve_whole left, locations it took and could not
    serve) for a read of it into ``view``."""
    vm = st.state.maps[vid]
    pieces = vm.lookup(0, SIZE)
    rest, unserved = serve_whole(st._hcache.peek, st.journal.pread_cached_many, vm.lineage, 0, view, list(pieces))
    return pieces, rest, unserved


def _data_at(st: Store, loc: int) -> int:
    """Where the data of the one-frame record at ``loc`` lies: after its header and table."""
    return loc_pos(loc) + len(st._hcache.peek(loc))


def _loc(st: Store, vid: int, off: int) -> int:
    """The location of the one record that maps the 4 KiB at ``off``."""
    ((_s, _e, loc),) = st.state.maps[vid].lookup(off, off + 4096)
    return loc


@pytest.mark.local_only("the pass reads the page cache of local segment files; the [rados] variant is below")
def test_whole_small_records_are_served_and_every_other_piece_is_left(tmp_path):
    _pool, st, vid, model = _aged(tmp_path)
    try:
        view = memoryview(bytearray(SIZE))
        pieces, rest, unserved = _serve(st, vid, view)
        assert unserved == set()
        # every whole record of one frame without block sums, and only those
        whole = {(off, off + 4096) for off in SMALLS} | {(ODD[0], ODD[0] + ODD[1]), (CUT[0] + 2048, CUT[0] + 6144)}
        served = [p for p in pieces if p not in rest]
        assert {(s, e) for s, e, _loc in served} == whole
        for s, e, _loc in served:
            assert view[s:e] == model[s:e]
        left = {(s, e) for s, e, _loc in rest}
        assert (EIGHT[0], EIGHT[0] + EIGHT[1]) in left  # block sums: the fast path reads its blocks
        assert (CUT[0], CUT[0] + 2048) in left  # a piece of a record, not all of it
        assert len(rest) == len(pieces) - len(whole)
        for n in (MiB, SIZE):  # and a read of many pieces returns the model
            buf = bytearray(n)
            assert st.read_into(vid, 0, memoryview(buf)) == n and buf == model[:n]
            assert st.read(vid, MiB - n // 2, n // 2) == model[MiB - n // 2 : MiB]
    finally:
        st.close()


@pytest.mark.parametrize("kind", ["lz4", "aes", "remote"])
def test_compressed_encrypted_and_remote_records_are_left_to_the_general_path(tmp_path, kind):
    if (kind == "remote") != (active() is not None):
        pytest.skip("the [rados] variant is the remote pool; the [local] one covers lz4 and aes")
    opts = {"lz4": {"compress": "lz4"}, "aes": {"encrypt": True}, "remote": {}}[kind]
    _pool, st, vid, model = _aged(tmp_path, **opts)
    try:
        view = memoryview(bytearray(SIZE))
        pieces, rest, unserved = _serve(st, vid, view)
        # a remote pool's records are taken, and all missed: no page cache (the read path does
        # not call the pass there at all)
        assert len(unserved) == (len(SMALLS) + 2 if kind == "remote" else 0)
        served = {(s, e) for s, e, _loc in pieces if (s, e, _loc) not in rest}
        if kind == "lz4":  # random data is not worth compressing: stored as is, so served
            assert {(off, off + 4096) for off in SMALLS} <= served
        else:
            assert served == set()
        assert st.read(vid, 0, SIZE) == model
    finally:
        st.close()


@pytest.mark.local_only("the page cache of a local segment file")
def test_pieces_not_in_the_page_cache_are_left_and_read_by_waiting(tmp_path):
    pool, st, vid, model = _aged(tmp_path)
    other = st.create_volume("w", 8 * MiB).id
    st.write(other, 0, os.urandom(6 * MiB))  # the live segment's mapped tail lies past the records
    st.close()
    st = Store.open(pool)
    try:
        assert st.read(vid, 0, SIZE) == model  # the headers are now cached
        evict_segments(pool)
        view = memoryview(bytearray(SIZE))
        pieces, rest, unserved = _serve(st, vid, view)
        assert len(rest) == len(pieces)  # nothing cached: nothing served, nothing waited for
        assert len(unserved) == len(SMALLS) + 2  # taken, missed: read by waiting, not tried again
        buf = bytearray(SIZE)
        assert st.read_into(vid, 0, memoryview(buf)) == SIZE and buf == model
    finally:
        st.close()


@pytest.mark.local_only("the damaged bytes are then in the page cache, where the pass finds them")
def test_a_damaged_small_record_is_left_and_the_read_reports_it(tmp_path):
    pool, st, vid, model = _aged(tmp_path)
    try:
        off = random.Random(3).choice(SMALLS)
        loc = _loc(st, vid, off)
        seg_flip(pool, loc_segno(loc), _data_at(st, loc) + 4000)
        view = memoryview(bytearray(SIZE))
        pieces, rest, unserved = _serve(st, vid, view)
        assert unserved == {loc}
        assert (off, off + 4096, loc) in rest and len(rest) == len(pieces) - len(SMALLS) - 2 + 1
        errors = st.stats.read_errors
        with pytest.raises(CorruptData, match="frame 0 of volume"):
            st.read_into(vid, 0, memoryview(bytearray(SIZE)))
        with pytest.raises(CorruptData, match="frame 0 of volume"):
            st.read(vid, 0, SIZE, nowait=True)
        assert st.stats.read_errors == errors + 2
        other = SMALLS[0] if off != SMALLS[0] else SMALLS[1]  # the rest still reads
        assert st.read(vid, other, 4096) == model[other : other + 4096]
    finally:
        st.close()


@pytest.mark.local_only("segment files")
def test_the_journal_reports_reads_it_cannot_make_from_the_page_cache(tmp_path):
    _pool, st, vid, model = _aged(tmp_path)
    try:
        loc = _loc(st, vid, SMALLS[0])
        at = _data_at(st, loc)
        ok, past, missing = (memoryview(bytearray(4096)) for _ in range(3))
        reads = [(loc_segno(loc), at, ok), (loc_segno(loc), 1 << 30, past), (10_000, 0, missing)]
        assert st.journal.pread_cached_many(reads) == [1, 2]  # past the file's end; no such segment
        assert ok == model[SMALLS[0] : SMALLS[0] + 4096]
    finally:
        st.close()
