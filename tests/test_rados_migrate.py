"""vstor pool migrate LOCALDIR rados://CEPHPOOL/PREFIX: a local pool with volumes, a group, a
snapshot and state files (consumer positions, the compliance clock) is copied, every object
verified (an optical disc image: its data extents); the RADOS pool then checks clean and
reads the same, byte for byte. An interrupted migrate (fault hooks) leaves a location that
refuses to open, a plain re-run says to use --resume, and --resume finishes it. In use,
damaged, existing or foreign destinations are refused with one line. The CLI runs in process
(vstor.cli.main.main). Needs the session's Ceph cluster (``make test-rados``)."""

from __future__ import annotations

import json
import os
import random
import sqlite3
from pathlib import Path

import pytest
from cephlab import CLIENT_TIMEOUT, TEST_POOL, CephLab
from poolkit import flip_byte, make_pool, seg_path

from vstor.backup.catalogdb import CATALOG, CephDatabases, sqlite_namespace
from vstor.cli.main import main
from vstor.clock import SystemClock
from vstor.control.host.lock import PoolLock
from vstor.errors import CorruptData, NotFound
from vstor.store.backend.location import open_backend, parse_rados
from vstor.store.backend.rados.backend import RadosBackend, connect_cluster
from vstor.store.backend.statefiles import local_files
from vstor.store.backend.stub import state_dir
from vstor.store.catalog import snapshots
from vstor.store.catalog.compliance import checkpoint as compliance_checkpoint
from vstor.store.journal.format import SEGMENT_HEADER_SIZE
from vstor.store.migrate.run import migrate_pool
from vstor.store.store import Store
from vstor.store.superblock import init_backend_pool

pytestmark = pytest.mark.rados
MiB = 1 << 20


@pytest.fixture
def env(ceph_lab: CephLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CephLab:
    monkeypatch.setenv("VSTOR_CEPH_CONF", str(ceph_lab.conf))
    monkeypatch.setenv("VSTOR_RADOS_STATE_DIR", str(tmp_path / "hosts"))
    monkeypatch.delenv("VSTOR_FAULTS", raising=False)
    return ceph_lab


def local_pool(tmp_path: Path) -> tuple[str, dict[tuple[int, int], bytes]]:
    """A local pool over several 16 MiB segments: volumes a and b in group g with a snapshot
    between two rounds of writes, a volume c outside it, a consumer and the compliance clock.
    Returns the pool and what every (snapshot id, volume id) reads (snapshot 0: the volume)."""
    pool = make_pool(tmp_path, compress="lz4")
    rng = random.Random(29)
    store = Store.open(pool)
    try:
        vids = [store.create_volume(n, 24 * MiB).id for n in ("a", "b", "c")]
        store.event(lambda st: st.catalog.make_group_create(st.table, "g", ["a", "b"], 0.0))
        for vid in vids:
            for _ in range(16):
                store.write(vid, rng.randrange(0, 22 * MiB), rng.randbytes(rng.randrange(128 << 10, 1280 << 10)))
        sid = snapshots.create(store, "g", "before")["id"]
        for vid in vids:
            for _ in range(10):
                store.write(vid, rng.randrange(0, 22 * MiB), rng.randbytes(rng.randrange(128 << 10, 1280 << 10)))
            store.trim(vid, 2 * MiB, 300 * 1024)
        store.consumers.register("backup", store.journal.durable_position())
        store.sync()
        want = {(0, vid): bytes(store.read(vid, 0, 24 * MiB)) for vid in vids}
        want |= {(sid, vid): bytes(store.read(vid, 0, 24 * MiB, sid=sid)) for vid in vids[:2]}
        assert len(store.journal.segments()) >= 3
    finally:
        store.close()
    compliance_checkpoint(local_files(pool), SystemClock())
    return pool, want


def cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vstor: error: "), lines
    return lines[0]


def assert_reads_same(location: str, want: dict[tuple[int, int], bytes]) -> None:
    store = Store.open(state_dir(location))
    try:
        assert sorted(v.name for v in store.volumes()) == ["a", "b", "c"]
        assert [s.name for s in store.state.catalog.snaps.values()] == ["before"]
        for (sid, vid), data in want.items():
            assert store.read(vid, 0, len(data), sid=sid) == data, f"snapshot {sid} volume {vid}"
        assert "backup" in store.consumers.positions()
    finally:
        store.close()


def test_migrate_copies_every_object_verified_and_the_rados_pool_reads_the_same(
        env: CephLab, rados_location: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pool, want = local_pool(tmp_path)
    tape = os.urandom(5 * MiB + 77)  # a cartridge file: to the backend's file area, not the state directory
    os.makedirs(os.path.join(pool, "media", "lib1"))
    Path(pool, "media", "lib1", "B00001L8.tape").write_bytes(tape)
    disc = Path(pool, "media", "lib1", "DISC01.side0.img")  # an optical disc side: sparse, data past a hole
    side_state = json.dumps({"state": "written", "sessions": [], "nwa": 0}).encode()
    with open(disc, "wb") as f:
        f.write(b"d" * 4096)
        f.seek(9 * MiB)
        f.write(os.urandom(MiB + 5))
        f.truncate(16 * MiB)  # a hole at the end too
    Path(pool, "media", "lib1", "DISC01.side0.json").write_bytes(side_state)
    os.makedirs(os.path.join(pool, "backup"))
    with sqlite3.connect(os.path.join(pool, "backup", "catalog.db")) as db:  # the backup catalog: to Ceph's SQLite
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany("INSERT INTO jobs (name) VALUES (?)", [(f"job{i}",) for i in range(100)])
    before = {p: Path(pool, p).read_bytes() for p in ("pool.json", "meta/checkpoint.a", "meta/consumers.json")}
    code, out, err = cli(capsys, "pool", "migrate", pool, rados_location, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["uuid"] and r["segments"] >= 3 and r["blobs"] == 4 and not r["resumed"]
    assert r["other_files"] >= 5 and r["bytes_per_second"] > 0  # consumers.json and copy, compliance clock, tape, db
    assert "copied (100%)" in err  # the last progress line
    state = Path(state_dir(rados_location))
    assert (state / "rados.json").exists()
    assert not (state / "meta" / "consumers.json").exists()  # state files: blobs in the cluster (PoolFiles)
    with open_backend(rados_location, str(env.conf), timeout=CLIENT_TIMEOUT) as be:
        for name in ("pool.json", "meta/checkpoint.a", "meta/consumers.json"):
            assert be.get(name) == before[name]
        assert be.exists("meta/compliance-clock.json")
        assert not be.exists("migrate.json")
        f = be.file_area("media", str(state / "media")).open("lib1/B00001L8.tape")
        assert f.size() == len(tape) and f.pread(len(tape), 0) == tape
        f.close()
        g = be.sparse_file_area("optical", str(state / "media")).open("lib1/DISC01.side0.img")
        assert g.size() == 16 * MiB and g.pread(16 * MiB, 0) == disc.read_bytes()
        assert sorted(g.stripes) == [0, 2, 3]  # type: ignore[attr-defined]  # 0, 2: the data; 3: the length (a hole)
        g.close()
        assert be.get("media/lib1/DISC01.side0.json") == side_state  # a state file
    assert not (state / "media" / "lib1" / "B00001L8.tape").exists() and not (state / "backup").exists()
    assert not list((state / "media").rglob("DISC01*"))
    db = CephDatabases(TEST_POOL, sqlite_namespace(parse_rados(rados_location).prefix), str(env.conf)).connect(CATALOG)
    try:
        assert db.execute("SELECT count(*), max(name) FROM jobs").fetchone() == (100, "job99")
    finally:
        db.close()
    assert {p: Path(pool, p).read_bytes() for p in before} == before  # the local pool is unchanged
    code, out, err = cli(capsys, "pool", "check", rados_location)
    assert code == 0 and out.splitlines()[-1].startswith("clean:"), out + err
    assert_reads_same(rados_location, want)


@pytest.mark.parametrize("fault", ["migrate.segment=eio@2", "migrate.superblock=eio"])
def test_an_interrupted_migrate_refuses_to_open_and_resume_finishes_it(
        env: CephLab, rados_location: str, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    pool, want = local_pool(tmp_path)
    monkeypatch.setenv("VSTOR_FAULTS", fault)
    code, _out, err = cli(capsys, "pool", "migrate", pool, rados_location)
    line = one_line(err)
    assert code == 1 and "injected EIO" in line and "did not finish: run it again with --resume" in line
    monkeypatch.delenv("VSTOR_FAULTS")
    with open_backend(rados_location, str(env.conf), timeout=CLIENT_TIMEOUT) as be:
        assert be.list_segments() and not be.exists("pool.json")
        with pytest.raises(NotFound, match="did not finish; run it again with --resume"):
            Store.open(str(tmp_path / "elsewhere"), backend=be)
    code, _out, err = cli(capsys, "pool", "init", rados_location, "--attach")
    assert code == 3 and "--resume" in one_line(err)
    code, _out, err = cli(capsys, "pool", "migrate", pool, rados_location)
    assert code == 4 and f"'vstor pool migrate {pool} {rados_location} --resume'" in one_line(err)
    code, out, err = cli(capsys, "pool", "migrate", pool, rados_location, "--resume", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["resumed"] and r["segments_kept"] >= 1
    code, out, _err = cli(capsys, "pool", "check", rados_location)
    assert code == 0, out
    assert_reads_same(rados_location, want)


def test_migrate_refuses_in_use_damaged_existing_and_foreign(env: CephLab, rados_location: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    pool, _want = local_pool(tmp_path)
    with PoolLock(pool):  # as a running daemon holds it
        code, _out, err = cli(capsys, "pool", "migrate", pool, rados_location)
    assert code == 5 and "stop it before 'pool migrate'" in one_line(err)
    code, _out, err = cli(capsys, "pool", "migrate", pool, str(tmp_path / "notrados"))
    assert code == 2 and "rados://" in one_line(err)
    code, _out, err = cli(capsys, "pool", "migrate", str(tmp_path / "nopool"), rados_location)
    assert code == 3 and "not a vstor pool" in one_line(err)
    with open_backend(rados_location, str(env.conf), timeout=CLIENT_TIMEOUT) as be:
        be.put("meta/stray", b"someone else's")  # a foreign object: not empty, no pool
        code, _out, err = cli(capsys, "pool", "migrate", pool, rados_location)
        assert code == 4 and "is not empty but holds no vstor pool" in one_line(err)
        be.delete("meta/stray")
        init_backend_pool(be, segment_size=16 * MiB)
    code, _out, err = cli(capsys, "pool", "migrate", pool, rados_location)
    assert code == 4 and "already holds a vstor pool" in one_line(err)
    flip_byte(seg_path(pool, 1), 8 * MiB)  # inside a record of the full first segment: pool check fails
    code, _out, err = cli(capsys, "pool", "migrate", pool, rados_location + "-2")
    assert code == 9 and "fails 'pool check'" in one_line(err)
    assert not os.path.exists(state_dir(rados_location + "-2"))


class RotInTransit(RadosBackend):
    """A destination that flips one bit of the records of segment 2 on their way (the fault
    the read-back verification is there for)."""

    def write_segment(self, segno: int, pos: int, data: bytes | memoryview) -> None:
        if segno == 2 and pos == SEGMENT_HEADER_SIZE:
            rotten = bytearray(data)
            rotten[1000] ^= 1
            data = bytes(rotten)
        super().write_segment(segno, pos, data)


def test_a_byte_that_reads_back_wrong_stops_the_migrate(env: CephLab, rados_location: str, tmp_path: Path) -> None:
    pool, _want = local_pool(tmp_path)
    loc = parse_rados(rados_location)
    dest = RotInTransit(connect_cluster(str(env.conf), None, CLIENT_TIMEOUT), loc.pool, loc.prefix, owns_cluster=True)
    try:
        with pytest.raises(CorruptData, match="journal segment 2 reads back .* with sha256 .* not the source's"):
            migrate_pool(pool, rados_location, dest, state_dir(rados_location), str(env.conf), None)
        assert dest.list_segments() == [1, 2] and not dest.exists("pool.json")
        with pytest.raises(NotFound, match="did not finish"):
            Store.open(str(tmp_path / "elsewhere"), backend=dest)
    finally:
        dest.close()
