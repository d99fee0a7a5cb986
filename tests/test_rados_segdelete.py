"""Deleting a journal segment on RADOS removes its stripes in parallel batches (radosbe.py,
``_remove_stripes``): every stripe goes, across several batches, the segment is unlisted first,
and other segments are untouched. Needs the session's Ceph cluster (make test-rados)."""

from __future__ import annotations

import pytest
from cephlab import CLIENT_TIMEOUT, CephLab

from vstor.store.backend import radosbe
from vstor.store.backend.location import open_backend
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
        assert _objects(be, 1) == [] and 1 not in be.list_segments()
        assert be.read_segment(2, len(HDR), 1000) == b"z" * 1000 and 2 in be.list_segments()
        be.delete_segment(1)  # gone already: no error
    finally:
        be.close()
