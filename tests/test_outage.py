"""Outages of a remote backend, in process and without Ceph (tests/outagekit.py stands in for a
cluster that stops, fills up and comes back): the journal is suspended, not failed; writes, syncs
and reads get EIO or ENOSPC at once; the store resumes in a new segment that seals the old one at
its last durable position; and writes a stopped cluster applies *late*, after the resume, are
never replayed, neither by the running store nor after a restart, nor reported as damage.
The same paths on a real cluster and through FUSE: tests/test_rados_faults.py."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from outagekit import StoppableBackend
from poolkit import MiB, make_pool, seg_path

from vstor.control.outagewatch import OutageWatch
from vstor.errors import PoolFull, Unavailable, VstorError
from vstor.faults import Faults
from vstor.store.backend.local import LocalBackend
from vstor.store.backend.rados.lock import LockLost
from vstor.store.check import check_pool
from vstor.store.journal.format import SEGMENT_HEADER_SIZE, loc_pos, pack_segment_header, segment_seal
from vstor.store.journal.outage import FULL, UNREACHABLE, outage_line
from vstor.store.journal.segscan import ScanEnd
from vstor.store.store import Store

K64 = 64 * 1024


def _open(pool: str) -> tuple[Store, StoppableBackend]:
    be = StoppableBackend(pool)
    return Store.open(pool, backend=be), be


def _outage_after_a_sync(store: Store, be: StoppableBackend) -> int:
    """A volume with "A" * 64 KiB durable at 0, then the cluster stops and "B" over it is never
    made durable: the sync that meets the outage fails. Returns the volume's id."""
    vid = store.create_volume("v", 8 * MiB).id
    store.write(vid, 0, b"A" * K64)
    store.sync()
    be.stopped = True
    store.write(vid, 0, b"B" * K64)
    with pytest.raises(Unavailable):
        store.sync()
    return vid


def test_segment_header_seal_round_trip() -> None:
    uid = os.urandom(16)
    assert segment_seal(pack_segment_header(uid, 7, 1)) is None
    raw = pack_segment_header(uid, 7, 1, 123456)
    assert segment_seal(raw) == 123456
    assert len(raw) == SEGMENT_HEADER_SIZE


def test_late_writes_past_the_seal_are_never_replayed(tmp_path: Path) -> None:
    pool = make_pool(tmp_path)
    store, be = _open(pool)
    try:
        vid = store.create_volume("v", 8 * MiB).id
        store.write(vid, 0, b"A" * K64)
        store.sync()  # acknowledged
        be.stopped = True
        store.write(vid, 0, b"B" * K64)  # queued, as aio writes are; the cluster holds them
        store.write(vid, K64, b"C" * K64)
        old_seg, durable = store.journal.durable_position()
        with pytest.raises(Unavailable) as e:
            store.sync()
        assert e.value.errno == errno.EIO
        assert store.journal.failed is None and store.journal.outage.kind == UNREACHABLE
        with pytest.raises(Unavailable):  # refused at once while suspended
            store.write(vid, 2 * K64, b"D" * 4096)
        with pytest.raises(Unavailable):  # written since the last sync: not known, not read
            store.read(vid, 0, 4096)
        assert "UNREACHABLE" in outage_line(store.journal.outage.describe())
        with pytest.raises(OSError):  # the cluster still does not answer: stays suspended
            store.resume_after_outage()
        assert store.journal.outage is not None
        be.stopped = False
        report = store.resume_after_outage()
        assert report is not None and report["sealed_segment"] == old_seg and report["sealed_at"] == durable
        assert report["dropped_bytes"] > 2 * K64
        assert be.deliver() > 2 * K64  # the late writes land in the old segment, past the seal
        assert os.path.getsize(seg_path(pool, old_seg)) > durable
        assert bytes(store.read(vid, 0, K64)) == b"A" * K64  # what was acknowledged, not B
        assert bytes(store.read(vid, K64, K64)) == bytes(K64)
        store.write(vid, 2 * K64, b"E" * K64)  # same sequence numbers as the dropped B and C
        store.sync()
        assert store.journal.current_segno == old_seg + 1
    finally:
        store.close(checkpoint=False)  # the restart replays the sealed segment
    store = Store.open(pool, backend=LocalBackend(pool))  # the same files, read as a local pool
    try:
        assert store.recovery["torn_tail"] is None and not store.recovery["damage"]
        assert bytes(store.read(vid, 0, K64)) == b"A" * K64
        assert bytes(store.read(vid, K64, K64)) == bytes(K64)
        assert bytes(store.read(vid, 2 * K64, K64)) == b"E" * K64
        rep = check_pool(store)
        assert rep.clean, rep.problems
    finally:
        store.close(checkpoint=False)


def test_a_restart_seals_the_segment_a_dead_owner_may_still_write_to(tmp_path: Path) -> None:
    """The daemon dies (or is fenced) during the outage; its held writes land after the next
    start's recovery: the segment recovery started seals the old one, so they are never read."""
    pool = make_pool(tmp_path)
    store, dead = _open(pool)
    try:
        vid = _outage_after_a_sync(store, dead)
    finally:
        store.close(checkpoint=False)  # as if killed: no resume, no checkpoint
    store, _be = _open(pool)  # another process (or host) recovers the pool
    try:
        old = store.journal.current_segno - 1
        assert store.journal.sealed_end(old) is not None
        assert dead.deliver() > K64  # the dead owner's write reaches the old segment only now
        store.write(vid, K64, b"C" * K64)
        store.sync()
    finally:
        store.close(checkpoint=False)
    store = Store.open(pool, backend=LocalBackend(pool))
    try:
        assert bytes(store.read(vid, 0, 2 * K64)) == b"A" * K64 + b"C" * K64
        assert check_pool(store).clean
        seal = store.journal.sealed_end(old)
        assert seal is not None and os.path.getsize(seg_path(pool, old)) > seal
        end = ScanEnd(old, SEGMENT_HEADER_SIZE)  # what every reader of the old segment sees
        positions = [loc_pos(r.loc) for r in store.journal.scan_one(old, end)]
        assert positions and max(positions) < seal and end.pos == seal and not end.reason
    finally:
        store.close(checkpoint=False)


def test_full_pool_gives_enospc_then_writes_resume(tmp_path: Path) -> None:
    pool = make_pool(tmp_path)
    store, be = _open(pool)
    try:
        vid = store.create_volume("v", 8 * MiB).id
        store.write(vid, 0, b"A" * K64)
        store.sync()
        be.full = True
        store.write(vid, K64, b"B" * K64)
        with pytest.raises(PoolFull) as e:
            store.sync()
        assert e.value.errno == errno.ENOSPC
        assert store.journal.outage.kind == FULL and store.journal.failed is None
        with pytest.raises(PoolFull):
            store.write(vid, 0, b"C" * 4096)
        assert "FULL" in outage_line(store.journal.outage.describe())
        with pytest.raises(OSError) as oe:
            store.resume_after_outage()
        assert oe.value.errno == errno.EDQUOT
        be.full = False  # quota raised
        assert store.resume_after_outage() is not None
        store.write(vid, K64, b"D" * K64)
        store.sync()
        assert bytes(store.read(vid, 0, 2 * K64)) == b"A" * K64 + b"D" * K64
    finally:
        store.close()


def test_a_resume_whose_create_landed_late_adopts_the_segment(tmp_path: Path) -> None:
    pool = make_pool(tmp_path)
    store, be = _open(pool)
    try:
        vid = _outage_after_a_sync(store, be)
        be.stopped = False
        be.create_lands_late = True  # the sealing segment is made, but the client hears a timeout
        with pytest.raises(OSError):
            store.resume_after_outage()
        assert store.journal.outage is not None
        assert store.resume_after_outage() is not None  # the same header is there: adopted
        store.write(vid, K64, b"C" * K64)
        store.sync()
    finally:
        store.close(checkpoint=False)
    store = Store.open(pool, backend=LocalBackend(pool))
    try:
        assert bytes(store.read(vid, 0, 2 * K64)) == b"A" * K64 + b"C" * K64
        assert check_pool(store).clean
    finally:
        store.close()


def _lost(code: int) -> LockLost:
    """A LockLost raised while handling a librados error with ``code``, as RadosLock.renew does."""
    try:
        try:
            raise OSError(code, "injected")
        except OSError:
            raise LockLost("lost the lock of pool x") from None
    except LockLost as e:
        return e


def test_a_lock_renewal_that_timed_out_suspends_until_renewed(tmp_path: Path) -> None:
    pool = make_pool(tmp_path)
    store, be = _open(pool)
    renewals: list[int] = []
    answer = [errno.ETIMEDOUT]

    def renew() -> None:
        renewals.append(1)
        if answer[0]:
            raise _lost(answer[0])

    watch = OutageWatch(store, renew_lock=renew)
    try:
        vid = store.create_volume("v", 8 * MiB).id
        watch.lock_lost(_lost(errno.ETIMEDOUT))
        assert store.journal.outage is not None and store.journal.failed is None
        with pytest.raises(Unavailable):
            store.write(vid, 0, b"x" * 4096)
        assert watch.poll() is None and renewals == [1]  # still timing out: stays suspended
        assert store.journal.failed is None
        answer[0] = 0
        assert watch.poll() is not None and store.journal.outage is None
        store.write(vid, 0, b"x" * 4096)
        store.sync()
        watch.lock_lost(_lost(errno.ETIMEDOUT))
        answer[0] = errno.EBUSY  # another client took the lock meanwhile: writes stop for good
        assert watch.poll() is None
        assert store.journal.failed
        with pytest.raises(VstorError):
            store.write(vid, 0, b"y" * 4096)
    finally:
        store.close(checkpoint=False)


def test_other_lock_losses_and_local_failures_still_fail_the_journal(tmp_path: Path) -> None:
    pool = make_pool(tmp_path)
    store, _be = _open(pool)
    try:
        OutageWatch(store, renew_lock=lambda: None).lock_lost(_lost(errno.EBUSY))
        assert store.journal.failed and store.journal.outage is None
    finally:
        store.close(checkpoint=False)
    pool2 = make_pool(tmp_path / "local")
    faults = Faults()
    store = Store.open(pool2, faults=faults)  # segments are local files: a failed fdatasync is final
    try:
        vid = store.create_volume("v", 8 * MiB).id
        faults.arm("journal.sync", "eio")
        store.write(vid, 0, b"x" * 4096)
        with pytest.raises(VstorError):
            store.sync()
        assert store.journal.failed and store.journal.outage is None
    finally:
        store.close(checkpoint=False)


def test_writes_a_resume_dropped_fail_each_open_images_next_fsync_once(tmp_path: Path) -> None:
    """A write the host made before an outage and had not synced is dropped by the resume. A host
    that did not fsync during the outage was never told: its next fsync must fail (EIO), once per
    open image as the kernel's errseq_t does, or it would take the dropped write for durable."""
    import types

    import mfusepy as fuse

    from vstor.fuse.ops import VolumeFS

    pool = make_pool(tmp_path)
    store, be = _open(pool)
    try:
        vid = store.create_volume("v", 8 * MiB).id
        fs = VolumeFS(store)
        first, second = (types.SimpleNamespace(flags=os.O_RDWR, fh=0, direct_io=0) for _ in range(2))
        fs.open("/volumes/v", first)
        fs.open("/volumes/v", second)
        fs.write("/volumes/v", b"A" * K64, 0, first)
        fs.fsync("/volumes/v", 0, first)
        fs.write("/volumes/v", b"B" * K64, K64, first)  # not synced when the cluster stops
        be.stopped = True
        with pytest.raises(Unavailable):
            store.sync()  # the daemon's own commit meets the outage: no host call is told
        be.stopped = False
        assert store.resume_after_outage()["dropped_bytes"] > 0
        later = types.SimpleNamespace(flags=os.O_RDWR, fh=0, direct_io=0)
        fs.open("/volumes/v", later)  # opened after the resume: nothing to be told
        for fi in (first, second):
            with pytest.raises(fuse.FuseOSError) as e:
                fs.fsync("/volumes/v", 0, fi)
            assert e.value.errno == errno.EIO
            assert fs.fsync("/volumes/v", 0, fi) == 0  # told once
        assert fs.fsync("/volumes/v", 0, later) == 0
        assert bytes(store.read(vid, 0, 2 * K64)) == b"A" * K64 + bytes(K64)
    finally:
        store.close()
