"""Backup catalog, retention, audit log and backup key ids (in-process, no daemon)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading

import pytest

from vstor.backup import _catalog_schema
from vstor.backup.audit import GENESIS, AuditLog, current_actor
from vstor.backup.catalog import INTERRUPTED, BackupCatalog
from vstor.backup.keys import BackupKeys
from vstor.backup.rules.retention import ExpiryPlan, apply_expiry, parse_duration, plan_expiry
from vstor.clock import ManualClock
from vstor.errors import AlreadyExists, Busy, FormatError, KeyError_, NotFound, UsageError
from vstor.store.backend.statefiles import local_files

DAY = 86400.0


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def cat(tmp_path, clock):
    c = BackupCatalog(str(tmp_path / "catalog.db"), clock)
    yield c
    c.close()


def run_job(cat, policy="p", level="full", base=None, barcode="T00001L8", retention=30 * DAY, status="done",
            part_on=None):
    """A job as the engine would write it: waiting, running, one part, one volume, done."""
    now = cat.clock.time()
    j = cat.new_job(policy, level, "vol0", base, 1, now + retention)
    cat.set_job(j, status="running", started=now)
    if cat.media(barcode) is None:
        cat.add_media(barcode, "lib0", False)
    cat.add_part(j, 0, barcode, "lib0", part_on or j, 0, 9, 4096, "aa" * 32)
    cat.add_volume(j, "vol0", 1 << 20, 4096, "bb" * 32)
    cat.set_job(j, status=status, ended=now + 10, bytes=4096, stored=4200, sha256="cc" * 32)
    return j


# -- catalog -------------------------------------------------------------------------------------
def test_schema_wal_and_version(cat, tmp_path):
    db = sqlite3.connect(tmp_path / "catalog.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == _catalog_schema.VERSION
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(FormatError, match="upgrade vstor"):
        BackupCatalog(str(tmp_path / "catalog.db"), ManualClock())


def test_catalog_is_owner_only_and_busy_when_locked(tmp_path, clock):
    path = tmp_path / "catalog.db"
    c = BackupCatalog(str(path), clock)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    c._db.execute("PRAGMA busy_timeout=50")
    with pytest.raises(Busy, match="another vstor daemon"):
        c.new_job("p", "full", "v", None, None, 0)
    other.execute("ROLLBACK")
    c.new_job("p", "full", "v", None, None, 0)
    c.close()
    with pytest.raises(UsageError, match="closed"):
        c.jobs()


def test_not_a_database_is_format_error(tmp_path, clock):
    p = tmp_path / "catalog.db"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(FormatError, match="rebuild it from the media"):
        BackupCatalog(str(p), clock)


def test_running_job_fails_at_reopen_without_close(tmp_path, clock):
    path = str(tmp_path / "catalog.db")
    c = BackupCatalog(path, clock)
    done = run_job(c)
    running = c.new_job("p", "incremental", "vol0", done, 1, clock.time() + DAY)
    c.set_job(running, status="running")
    waiting = c.new_job("p", "full", "vol1", None, 1, clock.time() + DAY)
    # kill -9: the first connection is never closed
    c2 = BackupCatalog(path, clock)
    assert c2.recovered_jobs == [running, waiting]
    for j in (running, waiting):
        assert c2.job(j)["status"] == "failed" and c2.job(j)["reason"] == INTERRUPTED
    assert c2.job(done)["status"] == "done"
    assert BackupCatalog(path, clock).recovered_jobs == []


def test_killed_process_leaves_no_running_job(tmp_path, clock):
    path = str(tmp_path / "catalog.db")
    code = (f"import os; from vstor.backup.catalog import BackupCatalog; from vstor.clock import ManualClock\n"
            f"c = BackupCatalog({path!r}, ManualClock()); j = c.new_job('p', 'full', 'v', None, None, 0)\n"
            f"c.set_job(j, status='running'); c.add_part(j, 0, 'T', 'lib0', 1, 0, 5, 10, 'ab')\n"
            f"os.kill(os.getpid(), 9)")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == -9
    c = BackupCatalog(path, clock)
    assert c.recovered_jobs == [1] and c.job(1)["status"] == "failed" and len(c.job(1)["parts"]) == 1
    assert plan_expiry(c, clock.time()).expire == [1]  # a failed job past its retention goes


def test_policies_crud(cat, clock):
    cat.put_policy({"name": "nightly", "retention": "30d"})
    clock.advance(5)
    cat.put_policy({"name": "nightly", "retention": "60d"})
    p = cat.policy("nightly")
    assert p["retention"] == "60d" and p["updated"] == p["created"] + 5
    assert [p["name"] for p in cat.policies()] == ["nightly"]
    with pytest.raises(NotFound, match="policy list"):
        cat.policy("weekly")
    with pytest.raises(UsageError):
        cat.put_policy({"retention": "1d"})
    j = cat.new_job("nightly", "full", "vol0", None, None, 0)
    cat.set_job(j, status="running")
    with pytest.raises(Busy, match="wait for it"):
        cat.delete_policy("nightly")
    cat.set_job(j, status="done")
    cat.delete_policy("nightly")
    assert cat.policies() == []
    with pytest.raises(NotFound):
        cat.delete_policy("nightly")


def test_media_states(cat):
    m = cat.add_media("W00001L8", "lib0", True)
    assert m["state"] == "scratch" and m["location"] == "library" and m["worm"] is True and m["jobs"] == 0
    with pytest.raises(AlreadyExists):
        cat.add_media("W00001L8", "lib0", True)
    cat.add_media("A00001L8", "lib1", False)
    cat.set_media("A00001L8", state="append", bytes=10, files=2, first_written=1.0, last_written=2.0)
    cat.set_media("A00001L8", location="offsite")
    a = cat.media("A00001L8")
    assert (a["state"], a["location"], a["bytes"], a["files"]) == ("append", "offsite", 10, 2)
    with pytest.raises(UsageError, match="not one of"):
        cat.set_media("A00001L8", state="lost")
    with pytest.raises(UsageError, match="no field"):
        cat.set_media("A00001L8", colour="red")
    with pytest.raises(NotFound):
        cat.set_media("X", state="full")
    assert cat.media("X") is None
    assert [m["barcode"] for m in cat.media_list()] == ["A00001L8", "W00001L8"]
    assert [m["barcode"] for m in cat.media_list("lib1")] == ["A00001L8"]


def test_job_parts_volumes_round_trip(cat, clock):
    j = run_job(cat)
    cat.add_part(j, 1, "T00002L8", "lib0", 1, 0, 3, 100, "dd" * 32)
    cat.add_volume(j, "vol1", 2048, 100, "ee" * 32)
    cat.set_job(j, verify="ok", verify_time=clock.time(), snapshot="vol0@b1")
    d = cat.job(j)
    assert (d["status"], d["level"], d["bytes"], d["stored"], d["verify"], d["snapshot"]) == \
        ("done", "full", 4096, 4200, "ok", "vol0@b1")
    assert [p["part"] for p in d["parts"]] == [0, 1] and d["parts"][1]["barcode"] == "T00002L8"
    assert [v["name"] for v in d["volumes"]] == ["vol0", "vol1"]
    assert cat.media("T00001L8")["jobs"] == 1
    with pytest.raises(AlreadyExists):
        cat.add_part(j, 1, "T00002L8", "lib0", 1, 0, 3, 100, "dd" * 32)
    with pytest.raises(UsageError):
        cat.set_job(j, verify="maybe")
    with pytest.raises(NotFound):
        cat.job(999)
    with pytest.raises(UsageError, match="base job"):
        cat.new_job("p", "incremental", "vol0", None, None, 0)
    bad = run_job(cat, status="failed")
    with pytest.raises(UsageError, match=f"job {bad} is failed"):
        cat.new_job("p", "incremental", "vol0", bad, None, 0)
    with pytest.raises(NotFound):
        cat.new_job("p", "incremental", "vol0", 999, None, 0)
    j2 = run_job(cat, policy="q")
    assert [x["id"] for x in cat.jobs()] == [j2, bad, j]
    assert [x["id"] for x in cat.jobs(policy="p", status="done")] == [j]
    assert cat.last_done("p")["id"] == j and cat.last_full("q")["id"] == j2 and cat.last_done("z") is None


def test_chain_and_broken_chain(cat):
    full = run_job(cat)
    i1 = run_job(cat, level="incremental", base=full)
    i2 = run_job(cat, level="incremental", base=i1)
    assert [j["id"] for j in cat.chain(i2)] == [full, i1, i2]
    assert cat.last_full("p")["id"] == full and cat.last_done("p")["id"] == i2
    cat.set_job(i1, status="expired")
    with pytest.raises(UsageError, match=f"job {i1}.* is expired"):
        cat.chain(i2)
    cat.set_job(i1, status="failed")
    with pytest.raises(UsageError, match="broken"):
        cat.chain(i2)


def test_restores_seconds_and_throughput(cat):
    j = run_job(cat)
    cat.add_restore(j, "/dev/x", 100.0, 110.0, 50_000_000, "done")
    r = cat.add_restore(j, "/dev/y", 200.0, 200.0, 0, "failed", "medium error")
    got = cat.restores("p")
    assert got[0]["id"] == r and got[0]["mb_per_s"] is None and got[0]["reason"] == "medium error"
    assert got[1]["seconds"] == 10.0 and got[1]["mb_per_s"] == pytest.approx(5.0) and got[1]["policy"] == "p"
    assert cat.restores("other") == []


def test_import_idempotent(cat):
    header = {"job": 42, "policy": "p", "level": "full", "source": "vol0", "expires": 5.0, "bytes": 10,
              "volumes": [{"name": "vol0", "size": 1, "bytes": 10, "sha256": "ab"}]}
    place = {"part": 0, "barcode": "I00001L8", "library": "lib0", "file": 1, "first_block": 0,
             "last_block": 7, "bytes": 10, "sha256": "cd"}
    assert cat.import_job(header, place) is True
    assert cat.import_job(header, place) is False
    assert cat.import_job(header, {**place, "part": 1, "file": 2}) is True
    assert cat.import_part(42, 1, "I00001L8", "lib0", 2, 0, 7, 10, "cd") is False
    j = cat.job(42)
    assert (j["status"], j["verify"], len(j["parts"]), len(j["volumes"])) == ("done", None, 2, 1)
    assert cat.media("I00001L8")["state"] == "used"
    assert cat.new_job("p", "full", "vol0", None, None, 0) > 42
    with pytest.raises(FormatError):
        cat.import_job({"job": 43}, place)


def test_threads_share_the_catalog(cat):
    def work(n):
        for _ in range(20):
            cat.new_job(f"p{n}", "full", "v", None, None, 0)
    ts = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(cat.jobs()) == 80


# -- retention -----------------------------------------------------------------------------------
def test_parse_duration():
    assert parse_duration("30d") == 30 * DAY and parse_duration("12h") == 43200 and parse_duration("90m") == 5400
    assert parse_duration("1w") == 7 * DAY and parse_duration("2y") == 730 * DAY and parse_duration("15") == 15
    with pytest.raises(UsageError, match="30d"):
        parse_duration("soon")


def test_expire_after_retention_keeps_newest_chain(cat, clock):
    old = run_job(cat, barcode="A")
    clock.advance(10 * DAY)
    new = run_job(cat, barcode="B")
    assert plan_expiry(cat, clock.time()) == ExpiryPlan()
    clock.advance(25 * DAY)  # old is past retention, new is not
    plan = plan_expiry(cat, clock.time())
    assert plan.expire == [old] and plan.recycle == ["A"]
    clock.advance(30 * DAY)  # both past: the newest full stays
    plan = plan_expiry(cat, clock.time())
    assert plan.expire == [old] and plan.kept[0][0] == new and "never pruned" in plan.kept[0][1]
    apply_expiry(cat, plan)
    assert cat.job(old)["status"] == "expired" and cat.job(new)["status"] == "done"
    a = cat.media("A")
    assert a["state"] == "recycle" and a["recycle_count"] == 1 and cat.media("B")["state"] == "scratch"


def test_needed_base_kept(cat, clock):
    full = run_job(cat, barcode="A")
    clock.advance(20 * DAY)
    inc = run_job(cat, level="incremental", base=full, barcode="A")
    run_job(cat, barcode="B", retention=60 * DAY)
    clock.advance(15 * DAY)  # full past retention, inc not; the newest chain is the newer full
    plan = plan_expiry(cat, clock.time())
    assert plan.expire == [] and plan.kept == [(full, f"job {inc} builds on it and is still within retention")]
    assert plan.recycle == []
    clock.advance(20 * DAY)
    plan = plan_expiry(cat, clock.time())
    assert plan.expire == [full, inc] and plan.recycle == ["A"]


def test_failed_jobs_expire_and_running_base_kept(cat, clock):
    full = run_job(cat, barcode="A", retention=DAY)
    bad = run_job(cat, barcode="A", status="failed", retention=DAY)
    inc = cat.new_job("p", "incremental", "vol0", full, 1, clock.time() + DAY)
    cat.set_job(inc, status="running")
    clock.advance(2 * DAY)
    plan = plan_expiry(cat, clock.time())
    assert plan.expire == [bad] and [k[0] for k in plan.kept] == [full]


def test_worm_and_offsite_refused(cat, clock):
    old = run_job(cat, barcode="W")
    cat.set_media("W", worm=True)
    run_job(cat, barcode="O")
    cat.set_media("O", location="offsite")
    run_job(cat, barcode="E")
    cat.set_media("E", state="error")
    clock.advance(10 * DAY)
    run_job(cat, barcode="N")
    clock.advance(25 * DAY)
    plan = plan_expiry(cat, clock.time())
    assert len(plan.expire) == 3 and old in plan.expire and plan.recycle == []
    why = dict(plan.refused)
    assert why["W"] == "WORM media are never recycled"
    assert "bring it back" in why["O"] and "never recycled automatically" in why["E"]
    apply_expiry(cat, ExpiryPlan(expire=plan.expire, recycle=["W", "O"]))  # apply re-checks anyway
    assert cat.media("W")["state"] == "scratch" and cat.media("O")["state"] == "scratch"


def test_recycle_only_when_all_jobs_expired(cat, clock):
    first = run_job(cat, barcode="A")
    clock.advance(10 * DAY)
    second = run_job(cat, barcode="A")
    run_job(cat, barcode="B")
    clock.advance(25 * DAY)  # first is past retention, second not: A holds a live job
    plan = plan_expiry(cat, clock.time())
    assert plan.expire == [first] and plan.recycle == []
    cat.add_media("EMPTY", "lib0", False)
    cat.set_media("EMPTY", state="full")
    cat.add_media("LABELLED", "lib0", False)
    cat.set_media("LABELLED", state="append")  # labelled, nothing written yet: left alone
    clock.advance(10 * DAY)
    plan = plan_expiry(cat, clock.time())
    assert plan.expire == [first, second] and plan.recycle == ["A", "EMPTY"]


# -- audit ---------------------------------------------------------------------------------------
def test_audit_append_and_verify(tmp_path, clock):
    path = str(tmp_path / "audit.log")
    log = AuditLog(local_files(str(tmp_path)), clock)
    assert log.head() == GENESIS and log.verify() == []
    e1 = log.append("alice", "policy.put", {"name": "nightly"})
    clock.advance(1)
    e2 = log.append("bob", "job.expire", {"jobs": [1, 2]})
    assert (e1["seq"], e1["prev"], e2["seq"], e2["prev"]) == (1, GENESIS, 2, e1["hash"])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert AuditLog(local_files(str(tmp_path)), clock).entries() == [e1, e2] and log.head() == e2["hash"]
    assert log.verify(anchor=e2["hash"]) == []
    assert isinstance(current_actor(), str) and current_actor()


def test_audit_concurrent_appends_stay_chained(tmp_path, clock):
    log = AuditLog(local_files(str(tmp_path)), clock)
    ts = [threading.Thread(target=lambda n=n: [log.append(f"u{n}", "act", {"i": i}) for i in range(25)])
          for n in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert log.verify() == [] and [e["seq"] for e in log.entries()] == list(range(1, 101))


def _three(tmp_path, clock):
    log = AuditLog(local_files(str(tmp_path)), clock)
    for n in range(3):
        log.append("alice", "act", {"n": n})
    return log, (tmp_path / "audit.log").read_bytes().splitlines(keepends=True)


def test_audit_detects_edit(tmp_path, clock):
    log, lines = _three(tmp_path, clock)
    e = json.loads(lines[1])
    e["details"]["n"] = 99
    (tmp_path / "audit.log").write_bytes(lines[0] + json.dumps(e).encode() + b"\n" + lines[2])
    assert any("edited" in p for p in log.verify())


def test_audit_detects_insert_delete_truncate(tmp_path, clock):
    log, lines = _three(tmp_path, clock)
    path = tmp_path / "audit.log"
    path.write_bytes(lines[0] + lines[1] + lines[1] + lines[2])
    assert any("inserted" in p for p in log.verify())
    path.write_bytes(lines[0] + lines[2])
    assert any("seq 3 where 2" in p for p in log.verify())
    path.write_bytes(b"".join(lines)[:-20])
    problems = log.verify()
    assert problems and "truncated" in problems[0]
    path.write_bytes(lines[0] + lines[1])  # removing the tail is seen only against an anchor
    assert log.verify() == [] and "not in the log" in log.verify(anchor=json.loads(lines[2])["hash"])[0]


def test_audit_append_after_torn_tail(tmp_path, clock):
    log, lines = _three(tmp_path, clock)
    (tmp_path / "audit.log").write_bytes(b"".join(lines) + b'{"seq": 4, "ti')
    e = log.append("alice", "after", {})
    assert e["seq"] == 5 and log.verify() == []
    assert [x["action"] for x in log.entries()][-2:] == ["audit.torn-tail", "after"]


# -- keys ----------------------------------------------------------------------------------------
ROOT = bytes(range(32))


def test_keys_rotate_and_reopen(tmp_path, clock):
    path, files = str(tmp_path / "keys.json"), local_files(str(tmp_path))
    keys = BackupKeys(files, ROOT, clock)
    assert keys.current() == 1 and keys.current() == 1
    k1 = keys.key(1)
    assert len(k1) == 32
    clock.advance(5)
    assert keys.rotate() == 2 and keys.current() == 2
    again = BackupKeys(files, ROOT, clock)
    assert again.current() == 2 and again.key(1) == k1 and again.key(2) != k1
    assert [(k["id"], k["current"]) for k in again.listing()] == [(1, False), (2, True)]
    with pytest.raises(KeyError_, match="key id 7"):
        again.key(7)
    raw = open(path, "rb").read()
    assert k1.hex().encode() not in raw and k1 not in raw and ROOT.hex().encode() not in raw
    assert BackupKeys(files, bytes(32), clock).key(1) != k1


def test_keys_need_pool_key_and_checksum(tmp_path, clock):
    path, files = tmp_path / "keys.json", local_files(str(tmp_path))
    with pytest.raises(UsageError, match="--encrypt --key-file"):
        BackupKeys(files, None, clock).current()
    BackupKeys(files, ROOT, clock).current()
    path.write_text(path.read_text().replace('"id": 1', '"id": 3'))
    with pytest.raises(FormatError, match="checksum"):
        BackupKeys(files, ROOT, clock)


def test_keys_rotation_by_age(tmp_path, clock):
    keys = BackupKeys(local_files(str(tmp_path)), ROOT, clock)
    assert keys.rotate_if_older(30 * DAY) == 1
    clock.advance(29 * DAY)
    assert keys.rotate_if_older(30 * DAY) is None
    clock.advance(DAY)
    assert keys.rotate_if_older(30 * DAY) == 2 and keys.current() == 2


def test_audit_append_reads_the_tail_even_past_a_long_entry(tmp_path, clock):
    from vstor.backup.audit import TAIL_BYTES
    from vstor.store.backend.statefiles import local_files
    log = AuditLog(local_files(str(tmp_path)), clock)
    for i in range(300):
        log.append("alice", "x", {"i": i, "pad": "p" * 500})
    log.append("alice", "big", {"blob": "b" * (3 * TAIL_BYTES)})  # the last entry is longer than the tail read
    log.append("alice", "after", {})
    log.append("alice", "after2", {})
    assert log.verify() == [] and [e["seq"] for e in log.entries()][-3:] == [301, 302, 303]
    assert log.head() == log.entries()[-1]["hash"]
