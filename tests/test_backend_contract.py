"""The PoolBackend contract, the same tests for every backend (local files and RADOS).

The RADOS cases need the session's one-node cluster (tests/cephlab.py) and python3-rados:
``make test-rados`` runs them with .venv-rados; elsewhere they are skipped.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cephlab import CLIENT_TIMEOUT, CephLab

from vstor.faults import Faults
from vstor.store.backend.base import PoolBackend
from vstor.store.backend.local import LocalBackend
from vstor.store.backend.location import open_backend, parse_rados
from vstor.store.journal.format import SEGMENT_HEADER_SIZE

BACKENDS = ["local", pytest.param("rados", marks=pytest.mark.rados)]
MiB = 1 << 20


def _open(kind: str, request: pytest.FixtureRequest, tmp_path: Path, faults: Faults) -> PoolBackend:
    if kind == "local":
        (tmp_path / "pool" / "journal").mkdir(parents=True)
        return LocalBackend(str(tmp_path / "pool"), faults)
    location = request.getfixturevalue("rados_location")
    lab: CephLab = request.getfixturevalue("ceph_lab")
    return open_backend(location, ceph_conf=str(lab.conf), faults=faults, timeout=CLIENT_TIMEOUT)


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def faults() -> Faults:
    return Faults()


@pytest.fixture
def be(kind: str, request: pytest.FixtureRequest, tmp_path: Path, faults: Faults) -> Iterator[PoolBackend]:
    backend = _open(kind, request, tmp_path, faults)
    yield backend
    backend.close()


def header(segno: int) -> bytes:
    return segno.to_bytes(8, "little") * (SEGMENT_HEADER_SIZE // 8)


def test_segments_append_read_truncate_delete(be: PoolBackend) -> None:
    assert be.list_segments() == []
    assert be.segment_size(7) == 0
    be.create_segment(7, header(7))
    with pytest.raises(FileExistsError):
        be.create_segment(7, header(7))
    be.create_segment(9, header(9))
    assert be.list_segments() == [7, 9]
    assert be.segment_size(7) == SEGMENT_HEADER_SIZE
    # appends, one of them crossing RADOS' 4 MiB stripe boundary
    blobs = [os.urandom(n) for n in (4096, 5 * MiB + 123, 65536, 17)]
    pos = SEGMENT_HEADER_SIZE
    for b in blobs:
        be.write_segment(7, pos, memoryview(b))
        pos += len(b)
    assert be.read_segment(7, SEGMENT_HEADER_SIZE, 4096) == blobs[0]  # read before the flush sees it
    be.flush_segment(7)
    whole = header(7) + b"".join(blobs)
    assert be.segment_size(7) == len(whole) == pos
    assert be.read_segment(7, 0, len(whole) + 1000) == whole  # short at the end
    for at, n in ((4 * MiB - 10, 20), (SEGMENT_HEADER_SIZE + 4096, 5 * MiB + 123), (pos - 17, 17), (pos, 10)):
        assert be.read_segment(7, at, n) == whole[at:at + n]
    cut = 4 * MiB + 77
    be.truncate_segment(7, cut)
    assert be.segment_size(7) == cut
    assert be.read_segment(7, 0, 8 * MiB) == whole[:cut]
    be.truncate_segment(7, 4 * MiB)
    assert be.read_segment(7, 0, 8 * MiB) == whole[:4 * MiB]
    be.delete_segment(7)
    be.delete_segment(7)  # absent: no error
    assert be.list_segments() == [9]
    assert be.segment_size(7) == 0
    with pytest.raises(FileNotFoundError):
        be.read_segment(7, 0, 10)
    assert be.read_segment(9, 0, 100) == header(9)


def test_truncate_removes_what_a_crash_left_past_a_gap(be: PoolBackend) -> None:
    """Writes in flight at a crash can land out of order (on RADOS, a later stripe without the
    one before it). Cutting the torn tail removes them all, so a later append past the cut
    never finds old bytes there."""
    be.create_segment(3, header(3))
    be.write_segment(3, 8 * MiB, b"x" * (4 * MiB))  # a later stripe landed, the one before did not
    be.flush_segment(3)
    cut = SEGMENT_HEADER_SIZE + 100
    be.truncate_segment(3, cut)
    assert be.segment_size(3) == cut
    be.write_segment(3, cut, b"y" * (8 * MiB + 1024 - cut))
    be.flush_segment(3)
    assert be.segment_size(3) == 8 * MiB + 1024
    assert be.read_segment(3, 8 * MiB, 2048) == b"y" * 1024


def test_many_writes_in_flight_then_flush(be: PoolBackend) -> None:
    be.create_segment(1, header(1))
    recs = [os.urandom(65536) for _ in range(200)]  # more than MAX_IN_FLIGHT
    pos = SEGMENT_HEADER_SIZE
    for r in recs:
        be.write_segment(1, pos, r)
        pos += len(r)
    be.flush_segment(1)
    assert be.read_segment(1, SEGMENT_HEADER_SIZE, pos) == b"".join(recs)


def test_blobs_atomic_replace_exclusive_create_list(be: PoolBackend) -> None:
    with pytest.raises(FileNotFoundError):
        be.get("meta/checkpoint.a")
    assert not be.exists("meta/checkpoint.a")
    be.put("meta/checkpoint.a", b"one")
    be.put("meta/checkpoint.a", b"two, longer than one")
    assert be.get("meta/checkpoint.a") == b"two, longer than one"
    be.put("meta/checkpoint.a", b"3")  # shorter: nothing of the old content is left
    assert be.get("meta/checkpoint.a") == b"3"
    be.put("meta/empty", b"")
    assert be.get("meta/empty") == b""
    be.create("pool.json", b"{}")
    with pytest.raises(FileExistsError):
        be.create("pool.json", b"other")
    assert be.get("pool.json") == b"{}"
    assert be.list_blobs("meta/") == ["meta/checkpoint.a", "meta/empty"]
    assert "pool.json" in be.list_blobs("")
    be.delete("meta/empty")
    be.delete("meta/empty")
    assert not be.exists("meta/empty") and be.exists("meta/checkpoint.a")
    assert be.list_blobs("meta") == ["meta/checkpoint.a"]


def test_injected_faults_are_oserrors(be: PoolBackend, faults: Faults) -> None:
    be.create_segment(1, header(1))
    faults.arm("backend.write", "eio")
    with pytest.raises(OSError) as e:
        be.write_segment(1, SEGMENT_HEADER_SIZE, b"x" * 100)
    assert e.value.errno == errno.EIO
    faults.arm("backend.flush", "eio")
    with pytest.raises(OSError):
        be.flush_segment(1)
    faults.arm("backend.put", "enospc")
    with pytest.raises(OSError) as e:
        be.put("meta/x", b"data")
    assert e.value.errno == errno.ENOSPC
    assert not be.exists("meta/x")
    be.put("meta/x", b"data")  # fired once: the next one goes through
    assert be.get("meta/x") == b"data"


def test_bad_rados_locations(monkeypatch: pytest.MonkeyPatch) -> None:
    from vstor.errors import UsageError
    assert parse_rados("rados://rbd/lab/a") == ("rbd", "lab/a")
    for bad in ("rados://", "rados://pool", "rados://pool/", "rados:///x", "/srv/pool"):
        with pytest.raises(UsageError):
            parse_rados(bad)
    monkeypatch.delenv("VSTOR_CEPH_CONF", raising=False)
    with pytest.raises(UsageError, match="--ceph-conf"):
        open_backend("rados://p/x")


@pytest.mark.rados
def test_stopped_osd_gives_timeout_errors_then_io_resumes(ceph_lab: CephLab, rados_location: str) -> None:
    """A stopped OSD: writes, flushes and blob replaces fail with ETIMEDOUT within the client
    timeout instead of hanging, and work again once the OSD runs."""
    be = open_backend(rados_location, ceph_conf=str(ceph_lab.conf), timeout=CLIENT_TIMEOUT)
    try:
        be.create_segment(1, header(1))
        be.put("meta/a", b"before")
        osd = ceph_lab.osd_pid()
        os.kill(osd, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(OSError) as e:
                be.put("meta/a", b"during")
            took = time.monotonic() - t0
            assert e.value.errno == errno.ETIMEDOUT, e.value
            assert CLIENT_TIMEOUT - 1 <= took < CLIENT_TIMEOUT + 5
            be.write_segment(1, SEGMENT_HEADER_SIZE, b"r" * 4096)  # queued: the error comes at the flush
            t0 = time.monotonic()
            with pytest.raises(OSError) as e:
                be.flush_segment(1)
            assert e.value.errno == errno.ETIMEDOUT
            assert time.monotonic() - t0 < CLIENT_TIMEOUT + 5
        finally:
            os.kill(osd, signal.SIGCONT)
        be.put("meta/a", b"after")
        assert be.get("meta/a") == b"after"
        with pytest.raises(OSError):  # the failed write stays failed: the journal must not guess
            be.flush_segment(1)
    finally:
        be.close()
    ceph_lab.check_alive()


@pytest.mark.rados
def test_a_closed_rados_backend_raises_instead_of_crashing(ceph_lab: CephLab, rados_location: str) -> None:
    """librados crashes the process on an I/O context used after its close: a closed backend
    answers every call with EBADF instead, and closing it again does nothing."""
    be = open_backend(rados_location, ceph_conf=str(ceph_lab.conf), timeout=CLIENT_TIMEOUT)
    be.put("meta/a", b"x")
    be.close()
    for call in (be.list_segments, lambda: be.get("meta/a"), lambda: be.put("meta/a", b"y"),
                 lambda: be.read_segment(1, 0, 10), lambda: be.write_segment(1, 0, b"z"),
                 lambda: be.append("meta/a", b"w"), lambda: be.read_tail("meta/a", 1)):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EBADF and "closed" in str(e.value)
    be.close()


def test_blob_append_read_tail_and_private_read(be: PoolBackend) -> None:
    with pytest.raises(FileNotFoundError):
        be.read_tail("backup/log", 10)
    be.append("backup/log", b"")  # made, empty
    assert be.get("backup/log") == b"" and be.read_tail("backup/log", 10) == (0, b"")
    lines = [f"{i:04d} {'x' * i}\n".encode() for i in range(100)]
    for line in lines:
        be.append("backup/log", line)
    whole = b"".join(lines)
    assert be.get("backup/log") == whole == be.get_private("backup/log")
    assert be.read_tail("backup/log", 50) == (len(whole), whole[-50:])
    assert be.read_tail("backup/log", 1 << 20) == (len(whole), whole)
    with pytest.raises(FileNotFoundError):
        be.get_private("backup/none")
