"""Deleting a journal segment on RADOS unlists it at once and removes its stripes in parallel
batches on the remover's thread (rados/backend.py ``_remove_stripes``, remover.py): every stripe goes,
across several batches, other segments are untouched, and a later look at the segment waits for
the removal. Needs the session's Ceph cluster (make test-rados)."""

from __future__ import annotations

import threading

import pytest
from cephlab import CLIENT_TIMEOUT, CephLab

from vstor.store.backend.location import open_backend
from vstor.store.backend.rados import backend as radosbe
from vstor.store.journal.format import SEGMENT_HEADER_SIZE

pytestmark = pytest.mark.rados

HDR = b"H" * SEGMENT_HEADER_SIZE


def _objects(be: radosbe.RadosBackend, segno: int) -> list[str]:
    prefix = be.stripe_name(segno, 0)[:-4]
    return sorted(o.key for o in be.jrn.list_objects() if o.key.startswith(prefix))


def test_a_segment_of_many_stripes_is_removed_in_batches(ceph_lab: CephLab, rados_location: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(radosbe, "REMOVE_BATCH", 2)  # five stripes: three batches, the last finds the end
    be = open_backend(rados_location, ceph_conf=str(ceph_lab.conf), timeout=CLIENT_TIMEOUT)
    try:
        for segno in (1, 2):
            be.create_segment(segno, HDR)
        stripe = radosbe.STRIPE_BYTES
        be.write_segment(1, 4 * stripe, b"x" * 1000)  # stripe 4; 1-3 by the writes below
        for k in (1, 2, 3):
            be.write_segment(1, k * stripe, b"y" * 1000)
        be.write_segment(2, len(HDR), b"z" * 1000)
        be.flush_segment(1)
        be.flush_segment(2)
        assert len(_objects(be, 1)) == 5
        be.delete_segment(1)
        assert 1 not in be.list_segments()
        be.remover.settle()
        assert _objects(be, 1) == [] and be.remover.done == 1
        assert be.read_segment(2, len(HDR), 1000) == b"z" * 1000 and 2 in be.list_segments()
        be.delete_segment(1)  # gone already: no error
    finally:
        be.close()


def test_a_deleted_segments_stripes_go_after_delete_returns(ceph_lab: CephLab, rados_location: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """delete_segment returns once the segment is unlisted; a size or read of it then waits for
    the stripes' removal, and close waits for every removal."""
    held, release = threading.Event(), threading.Event()
    real = radosbe.RadosBackend._remove_stripes

    def slow(self: radosbe.RadosBackend, segno: int) -> None:
        held.set()
        assert release.wait(30)
        real(self, segno)

    monkeypatch.setattr(radosbe.RadosBackend, "_remove_stripes", slow)
    be = open_backend(rados_location, ceph_conf=str(ceph_lab.conf), timeout=CLIENT_TIMEOUT)
    try:
        be.create_segment(1, HDR)
        be.write_segment(1, 2 * radosbe.STRIPE_BYTES, b"x" * 1000)
        be.flush_segment(1)
        be.delete_segment(1)  # returns with the removal held
        assert held.wait(30) and 1 not in be.list_segments()
        assert len(_objects(be, 1)) == 2  # stripes 0 and 2, still there
        sizes: list[int] = []
        looker = threading.Thread(target=lambda: sizes.append(be.segment_size(1)))
        looker.start()
        looker.join(0.3)
        assert looker.is_alive() and sizes == []  # waits for the removal
        release.set()
        looker.join(30)
        assert sizes == [0] and _objects(be, 1) == []
        with pytest.raises(FileNotFoundError):
            be.read_segment(1, 0, 10)
        be.create_segment(3, HDR)
        release.clear()
        held.clear()
        be.delete_segment(3)
        assert held.wait(30)
        closer = threading.Thread(target=be.close)
        closer.start()
        closer.join(0.3)
        assert closer.is_alive()  # close waits for the held removal
        release.set()
        closer.join(30)
        assert not closer.is_alive()
        be = open_backend(rados_location, ceph_conf=str(ceph_lab.conf), timeout=CLIENT_TIMEOUT)
        assert _objects(be, 3) == []
    finally:
        release.set()
        be.close()
