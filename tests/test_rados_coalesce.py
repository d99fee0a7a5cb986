"""Small journal appends on RADOS are held and sent as one write (backend/coalesce.py used by
rados.backend.RadosBackend): a flush sends and covers them, a read or size of the segment sees them
without a flush, a large write sends them first and lands after them, and an abandoned
segment's held bytes never land. Needs the session's Ceph cluster (make test-rados)."""

from __future__ import annotations

import os

import pytest
from cephlab import CLIENT_TIMEOUT, CephLab

from vstor.store.backend.location import open_backend
from vstor.store.journal.format import SEGMENT_HEADER_SIZE

pytestmark = pytest.mark.rados

HDR = b"H" * SEGMENT_HEADER_SIZE


def test_small_appends_go_as_one_write_and_reads_see_them(ceph_lab: CephLab, rados_location: str) -> None:
    be = open_backend(rados_location, ceph_conf=str(ceph_lab.conf), timeout=CLIENT_TIMEOUT)
    try:
        be.create_segment(1, HDR)
        recs = [os.urandom(4200) for _ in range(16)]
        pos = len(HDR)
        for r in recs:
            be.write_segment(1, pos, r)
            pos += len(r)
        assert be.pending.held == 16 and be.pending.sent == 0 and len(be.pending) == 16 * 4200
        assert be.segment_size(1) == pos, "a size sees the held appends"
        assert be.pending.sent == 1 and len(be.pending) == 0
        more = os.urandom(5000)
        be.write_segment(1, pos, more)
        assert be.read_segment(1, len(HDR), pos + 5000) == b"".join(recs) + more, "a read sees them"
        big = os.urandom(300_000)  # not held: the held bytes go first, then this
        be.write_segment(1, pos + 5000, b"z" * 10)
        be.write_segment(1, pos + 5010, big)
        be.flush_segment(1)
        assert be.pending.sent == 3 and len(be.pending) == 0
        assert be.read_segment(1, pos, 5010 + len(big)) == more + b"z" * 10 + big
    finally:
        be.close()


def test_an_abandoned_segments_held_appends_never_land(ceph_lab: CephLab, rados_location: str) -> None:
    be = open_backend(rados_location, ceph_conf=str(ceph_lab.conf), timeout=CLIENT_TIMEOUT)
    try:
        be.create_segment(2, HDR)
        be.write_segment(2, len(HDR), b"a" * 4096)
        be.flush_segment(2)
        be.write_segment(2, len(HDR) + 4096, b"b" * 4096)  # held, never flushed
        be.abandon_segment(2)  # an outage: the journal resumes in a new segment
        assert be.segment_size(2) == len(HDR) + 4096
        be.write_segment(3, 0, b"c" * 100)  # held for another segment
    finally:
        be.close()  # close sends it
    be = open_backend(rados_location, ceph_conf=str(ceph_lab.conf), timeout=CLIENT_TIMEOUT)
    try:
        assert be.read_segment(3, 0, 100) == b"c" * 100
        assert be.read_segment(2, len(HDR), 8192) == b"a" * 4096
    finally:
        be.close()
