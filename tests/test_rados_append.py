"""Appending to a RADOS pool's state file with the RADOS append op (rados/append.py): an entry
costs the entry, not the log (measured by the OSD's own count of bytes written); a reader on
another client racing the appends sees whole entries only; the striped form (past max_blob,
or once the OSD's osd_max_object_size refuses the object) keeps taking entries; a fenced
client's append fails; the backup audit log's hash chain verifies after many appends. Needs
the session's Ceph cluster (``make test-rados``)."""

from __future__ import annotations

import errno
import json
import threading
from collections.abc import Iterator

import pytest
from cephlab import CLIENT_TIMEOUT, CephLab

from vstor.backup.audit import AuditLog
from vstor.clock import ManualClock
from vstor.store.backend.location import parse_rados
from vstor.store.backend.rados.backend import RadosBackend, connect_cluster
from vstor.store.backend.rados.blob import HEAD_SIZE, STRIPED_DIR
from vstor.store.backend.statefiles import PoolFiles

pytestmark = pytest.mark.rados
LOG = "backup/audit.log"


def backend(lab: CephLab, location: str, max_blob: int | None = None) -> RadosBackend:
    loc = parse_rados(location)
    kw = {} if max_blob is None else {"max_blob": max_blob}
    return RadosBackend(connect_cluster(str(lab.conf), None, CLIENT_TIMEOUT), loc.pool, loc.prefix,
                        owns_cluster=True, **kw)  # type: ignore[arg-type]


@pytest.fixture
def be(ceph_lab: CephLab, rados_location: str) -> Iterator[RadosBackend]:
    b = backend(ceph_lab, rados_location)
    yield b
    b.close()


def entry(i: int, size: int = 100) -> bytes:
    head = f"{i:08d}:".encode()
    return head + bytes([97 + i % 26]) * (size - len(head) - 1) + b"\n"


def check_whole(data: bytes, size: int) -> int:
    """The number of entries in ``data``; fails unless it is entries 0, 1, ... whole."""
    assert len(data) % size == 0, f"{len(data)} bytes: not whole entries of {size} (a torn read)"
    n = len(data) // size
    assert data == b"".join(entry(i, size) for i in range(n))
    return n


def osd_bytes(lab: CephLab) -> tuple[int, int]:
    """The bytes the OSD's clients sent it in operations and the bytes it returned (perf
    counters of write-only, read-only and read-write operations: an append asserting the
    object's version is a read-write one)."""
    osd = json.loads(lab.ceph("tell", f"osd.{lab.osd_id}", "perf", "dump"))["osd"]
    return (int(osd["op_w_in_bytes"]) + int(osd["op_rw_in_bytes"]),
            int(osd["op_r_out_bytes"]) + int(osd["op_rw_out_bytes"]))


def osd_bytes_written(lab: CephLab) -> int:
    return osd_bytes(lab)[0]


def test_an_append_sends_the_entry_not_the_log(ceph_lab: CephLab, be: RadosBackend) -> None:
    big = b"".join(entry(i, 1024) for i in range(8 * 1024))  # an 8 MiB log
    be.put(LOG, big)
    before = osd_bytes_written(ceph_lab)
    for i in range(20):
        be.append(LOG, entry(8 * 1024 + i, 1024))
    sent = osd_bytes_written(ceph_lab) - before
    assert 20 * 1024 <= sent < 64 * 1024, f"20 appends of 1 KiB to an 8 MiB log sent {sent} bytes"
    assert check_whole(be.get(LOG), 1024) == 8 * 1024 + 20
    assert be.meta.stat(LOG)[0] == len(big) + 20 * 1024  # one plain object, not the striped form


def test_a_reader_racing_the_appends_sees_whole_entries(ceph_lab: CephLab, rados_location: str,
                                                        be: RadosBackend) -> None:
    size, count = 16 * 1024, 400
    be.append(LOG, entry(0, size))
    reader = backend(ceph_lab, rados_location)  # another client, as another process reads the log
    seen: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                seen.append(check_whole(reader.get(LOG), size))
        except BaseException as e:  # noqa: BLE001  (reported by the test thread)
            errors.append(e)

    t = threading.Thread(target=read)
    t.start()
    try:
        for i in range(1, count):
            be.append(LOG, entry(i, size))
    finally:
        done.set()
        t.join()
        reader.close()
    assert not errors, errors[0]
    assert len(seen) > 20 and seen == sorted(seen), seen[:50]  # many reads, each a later state
    assert check_whole(be.get(LOG), size) == count


def test_past_max_blob_the_log_goes_striped_and_keeps_growing(ceph_lab: CephLab, rados_location: str) -> None:
    small = 4096
    with backend(ceph_lab, rados_location, max_blob=small) as b:
        for i in range(40):  # 40 entries of 100 bytes: 4000 bytes, one plain object
            b.append(LOG, entry(i))
        assert b.meta.stat(LOG)[0] == 4000
        for i in range(40, 120):  # past max_blob: the striped form, and it stays so
            b.append(LOG, entry(i))
            assert check_whole(b.get(LOG), 100) == i + 1
        assert b.meta.stat(LOG)[0] == HEAD_SIZE
        assert len([o for o in b.meta.list_objects() if o.key.startswith(STRIPED_DIR + LOG)]) == 3
    with backend(ceph_lab, rados_location, max_blob=small) as b:  # another client: striped, appended whole
        b.append(LOG, entry(120))
        assert check_whole(b.get(LOG), 100) == 121 and b.meta.stat(LOG)[0] == HEAD_SIZE


@pytest.fixture
def object_limit(ceph_lab: CephLab) -> Iterator[int]:
    """The OSD refuses objects over 5 MiB (osd_max_object_size) during the test."""
    limit = 5 << 20
    ceph_lab.ceph("config", "set", "osd", "osd_max_object_size", str(limit))
    try:
        yield limit
    finally:
        ceph_lab.ceph("config", "rm", "osd", "osd_max_object_size")


def test_an_object_the_osd_refuses_to_grow_goes_striped(be: RadosBackend, object_limit: int) -> None:
    n = object_limit // 1024
    be.put(LOG, b"".join(entry(i, 1024) for i in range(n - 1)))
    be.append(LOG, entry(n - 1, 1024))  # exactly the limit: still one object
    assert be.meta.stat(LOG)[0] == object_limit
    with pytest.raises(OSError) as e:
        be.put("meta/x", b"y" * (object_limit + 1))  # what the OSD now refuses to a plain write
    assert e.value.errno == errno.EFBIG
    for i in range(n, n + 3):
        be.append(LOG, entry(i, 1024))  # refused as one object: the log moves to the striped form
    assert check_whole(be.get(LOG), 1024) == n + 3
    assert be.meta.stat(LOG)[0] == HEAD_SIZE


def test_an_osd_limit_below_a_stripe_is_a_clear_error(ceph_lab: CephLab, be: RadosBackend) -> None:
    be.put(LOG, b"".join(entry(i, 1024) for i in range(60)))
    ceph_lab.ceph("config", "set", "osd", "osd_max_object_size", str(64 * 1024))
    try:
        be.append(LOG, entry(60, 1024))  # 61 KiB: still taken
        for i in range(61, 64):
            be.append(LOG, entry(i, 1024))
        with pytest.raises(OSError, match="osd_max_object_size is below") as e:
            be.append(LOG, entry(64, 1024))  # past 64 KiB, and a striped copy's 4 MiB stripe is refused too
        assert e.value.errno == errno.EFBIG
    finally:
        ceph_lab.ceph("config", "rm", "osd", "osd_max_object_size")
    assert check_whole(be.get(LOG), 1024) == 64  # the log as it was: nothing half-written
    be.append(LOG, entry(64, 1024))  # the limit raised again: the log goes on
    assert check_whole(be.get(LOG), 1024) == 65


def test_a_fenced_clients_append_fails_and_trips_the_backend(ceph_lab: CephLab, rados_location: str,
                                                             be: RadosBackend) -> None:
    from vstor.store.backend.rados.clslock import holder_addrs
    from vstor.store.backend.rados.fenced import FencedBackend
    loc = parse_rados(rados_location)
    victim = connect_cluster(str(ceph_lab.conf), None, CLIENT_TIMEOUT)
    tripped: list[OSError] = []
    fb = FencedBackend(victim, loc.pool, loc.prefix, tripped.append)
    try:
        fb.append(LOG, entry(0))
        fb.append(LOG, entry(1))
        for addr in holder_addrs(str(victim.get_addrs())):
            be.cluster.blocklist_add(addr)
        be.cluster.wait_for_latest_osdmap()
        be.put("probe", b"the OSD has the map with the blocklist")
        with pytest.raises(OSError, match="fenced") as e:
            fb.append(LOG, entry(2))
        assert e.value.errno == errno.ESHUTDOWN and len(tripped) == 1
        with pytest.raises(OSError, match="fenced"):
            fb.append(LOG, entry(2))  # refused here from now on, without asking RADOS
        assert len(tripped) == 1
        assert check_whole(be.get(LOG), 100) == 2
    finally:
        fb.close()
        victim.shutdown()


def test_the_audit_chain_verifies_after_many_appends(ceph_lab: CephLab, rados_location: str) -> None:
    clock = ManualClock()
    with backend(ceph_lab, rados_location, max_blob=16 * 1024) as b:  # crosses into the striped form
        audit = AuditLog(PoolFiles(b).sub("backup"), clock)
        for i in range(150):
            clock.advance(1)
            audit.append("alice", "setting.set", {"n": i, "pad": "x" * (i % 50)})
        assert audit.verify() == []
        assert b.meta.stat(LOG)[0] == HEAD_SIZE
        head = audit.head()
    with backend(ceph_lab, rados_location) as b:
        audit = AuditLog(PoolFiles(b).sub("backup"), clock)
        assert [e["seq"] for e in audit.entries()] == list(range(1, 151))
        assert audit.verify(anchor=head) == []


def test_a_private_read_on_rados_is_a_plain_read(be: RadosBackend) -> None:
    files = PoolFiles(be).sub("backup")
    files.write("admins.json", b"{}")
    assert files.read("admins.json", private=True) == b"{}" and files.read("none.json", private=True) is None


def test_an_audit_entry_costs_the_entry_on_a_big_log(ceph_lab: CephLab, be: RadosBackend) -> None:
    """The audit log's append reads the log's tail and appends the entry: on an 8 MiB log, ten
    entries move well under 1 MiB in all (the OSD's counts), and the chain still verifies."""
    from vstor.backup.audit import GENESIS, canonical, entry_hash
    clock = ManualClock()
    lines, prev = [], GENESIS
    for i in range(2000):  # a chained log of 8 MiB, as 2000 entries would have written it
        e = {"seq": i + 1, "time": clock.time(), "actor": "alice", "action": "setting.set",
             "details": {"n": i, "pad": "p" * 4000}, "prev": prev}
        e["hash"] = prev = entry_hash(e)
        lines.append(canonical(e) + b"\n")
    be.put(LOG, b"".join(lines))
    audit = AuditLog(PoolFiles(be).sub("backup"), clock)
    wrote, read = osd_bytes(ceph_lab)
    for i in range(10):
        clock.advance(1)
        audit.append("bob", "key.rotate", {"key_id": i})
    wrote, read = osd_bytes(ceph_lab)[0] - wrote, osd_bytes(ceph_lab)[1] - read
    assert 0 < wrote < 64 * 1024 and read < 1 << 20, f"10 audit entries on an 8 MiB log: wrote {wrote}, read {read}"
    assert audit.verify() == [] and audit.entries()[-1]["seq"] == 2010
