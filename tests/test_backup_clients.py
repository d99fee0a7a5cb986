"""Backup clients end to end, in process over real TLS on loopback, with the engine on a real
pool and an emulated tape library: a tree of ~2,000 files with every kind of entry pushed and
restored byte-equal with its metadata (and read by plain GNU tar), incrementals with changes and
deletions, one file restored alone, the agent called by the schedule, and the six failure
points of a transfer. The CLI through the daemon is in test_backup_clients_cli.py."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import threading
import time

import pytest
from clientkit import Lab, allocated, make_tree, snapshot
from poolkit import MiB

from vstor.backup.client import agent, wire
from vstor.backup.client.conn import Refused
from vstor.backup.media.mediaio import read_part
from vstor.errors import NotRunning, UsageError
from vstor.faults import Faults
from vstor.replication import pki


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path, clients=("c1", "c2"))
    yield lab
    lab.close()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(str(tmp_path_factory.mktemp("client") / "srv"))


def files_of(lab: Lab, job: int) -> dict[str, dict]:
    return {f["path"]: f for f in lab.engine.catalog.client_files(job)}


def no_job_left_running(lab: Lab) -> None:
    assert not [j for j in lab.engine.catalog.jobs() if j["status"] in ("waiting", "running")]


def test_push_restores_byte_equal_with_metadata_and_plain_tar_reads_it(lab, tree, tmp_path):
    lab.clients.register("c1", paths=[tree])
    lab.policy()
    r = agent.push(lab.address, lab.tls, "c1", [tree])
    assert r["status"] == "done" and r["level"] == "full" and r["files"] > 2000, r
    job = lab.engine.catalog.job(r["job"])
    assert job["status"] == "done" and job["source"] == "client:c1" and job["parts"] and job["verify"] == "ok", job
    cat = files_of(lab, r["job"])
    assert len(cat) == r["files"] and all(f["sha256"] for f in cat.values() if f["type"] == "file")
    assert cat[os.path.join(tree, "d0", "big-hardlink")]["type"] == "hardlink"

    out = str(tmp_path / "out")
    res = lab.clients.restore(r["job"], to=out)
    assert res["files"] == len(cat)
    st = os.stat(out + tree + "/big.bin")  # before anything reads it (relatime)
    assert (st.st_mtime_ns, st.st_atime_ns) == (1_500_000_000_987_654_321, cat[tree + "/big.bin"]["atime_ns"])
    assert snapshot(out + tree) == snapshot(tree)  # content, mode, owner, mtimes, links, link counts
    assert allocated(out + tree + "/sparse.img") < 2 * MiB  # holes stay holes
    assert allocated(out + tree + "/holes-only") == 0

    # The media hold a pax stream plain GNU tar extracts (the sparse file with its holes).
    part = job["parts"][0]
    carts = lab.clients._cartridges("lib")
    stream = tmp_path / "job.tar"
    with open(stream, "wb") as f:
        for block in read_part(carts.load_for_read(part["barcode"]), part["file"], None, job["id"], 0):
            f.write(block)
    carts.release()
    tar_out = tmp_path / "tar"
    tar_out.mkdir()
    subprocess.run(["tar", "-xSf", str(stream), "-C", str(tar_out)], check=True)
    for name in ("sparse.img", "big.bin", "new\nline", "d0/big-hardlink"):
        with open(os.path.join(tar_out, tree.lstrip("/"), name), "rb") as a, open(os.path.join(tree, name), "rb") as b:
            assert a.read() == b.read(), name
    assert os.readlink(os.path.join(tar_out, tree.lstrip("/"), "link-rel")) == "big.bin"
    assert os.stat(os.path.join(tar_out, tree.lstrip("/"), "big.bin")).st_mtime_ns == 1_500_000_000_987_654_321
    assert os.path.exists(os.path.join(os.fsencode(str(tar_out)), os.fsencode(tree.lstrip("/")), b"bad-\x80\x81utf8"))
    assert os.path.exists(os.path.join(tar_out, "VSTOR-CLIENT-MANIFEST.jsonl"))


def test_incremental_sends_changes_and_records_deletions(lab, tmp_path):
    src = make_tree(str(tmp_path / "src"), files=300, seed=2)
    lab.clients.register("c1", paths=[src])
    lab.policy(level="incremental")
    full = agent.push(lab.address, lab.tls, "c1", [src])
    assert full["level"] == "full"
    before = snapshot(src)
    lab.clock.advance(3600)
    with open(os.path.join(src, "big.bin"), "r+b") as f:  # same size, new mtime
        f.write(b"changed!")
    os.unlink(os.path.join(src, "empty"))
    os.unlink(os.path.join(src, "link-dangling"))
    with open(os.path.join(src, "d0", "new-file"), "wb") as f:
        f.write(b"new" * 1000)
    inc = agent.push(lab.address, lab.tls, "c1", [src])
    assert inc["status"] == "done" and inc["level"] == "incremental", inc
    assert inc["sent"]["deleted"] == 2 and inc["deleted"] == 2
    # sent: the two changed files, the directories whose mtime changed, hard links (always)
    assert inc["sent"]["files"] < 20, inc
    assert sorted(lab.engine.catalog.client_deleted(inc["job"])) == [os.path.join(src, "empty"),
                                                                      os.path.join(src, "link-dangling")]
    cat = files_of(lab, inc["job"])
    assert cat[os.path.join(src, "d0", "new-file")]["change"] == "new"
    assert cat[os.path.join(src, "big.bin")]["change"] == "changed"
    same = [f for f in cat.values() if f["change"] == "same"]
    assert len(same) > 250 and all(f["src_job"] == full["job"] for f in same)  # on the full's media
    lab.clients.restore(inc["job"], to=str(tmp_path / "r-inc"))
    assert snapshot(str(tmp_path / "r-inc") + src) == snapshot(src)
    lab.clients.restore(full["job"], to=str(tmp_path / "r-full"))
    assert snapshot(str(tmp_path / "r-full") + src) == before


def test_check_content_finds_a_change_that_kept_size_and_mtime(lab, tmp_path):
    src = make_tree(str(tmp_path / "src"), files=50, seed=3)
    lab.clients.register("c1", paths=[src])
    lab.policy(level="incremental")
    agent.push(lab.address, lab.tls, "c1", [src])
    path = os.path.join(src, "big.bin")
    st = os.stat(path)
    with open(path, "r+b") as f:  # other bytes, same size, and the old mtime put back
        f.write(b"sneaky!!")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    lab.clock.advance(60)
    plain = agent.push(lab.address, lab.tls, "c1", [src])
    assert plain["status"] == "done" and files_of(lab, plain["job"])[path]["change"] == "same"
    lab.clock.advance(60)
    checked = agent.push(lab.address, lab.tls, "c1", [src], check_content=True)
    assert checked["status"] == "done" and files_of(lab, checked["job"])[path]["change"] == "changed"
    lab.clients.restore(checked["job"], to=str(tmp_path / "r"), files=path)
    with open(str(tmp_path / "r") + path, "rb") as a, open(path, "rb") as b:
        assert a.read() == b.read()


def test_one_file_restored_alone_reads_only_its_records(lab, tree, tmp_path):
    lab.clients.register("c1", paths=[tree])
    lab.policy()
    r = agent.push(lab.address, lab.tls, "c1", [tree])
    stored = lab.engine.catalog.job(r["job"])["stored"]
    name = sorted(p for p in files_of(lab, r["job"]) if p.endswith("/f1234.txt"))[0]
    res = lab.clients.restore(r["job"], to=str(tmp_path / "one"), files=name)
    assert res["files"] == 1
    with open(str(tmp_path / "one") + name, "rb") as a, open(name, "rb") as b:
        assert a.read() == b.read()
    assert res["read_bytes"] <= 3 * 256 * 1024 < stored // 10, (res, stored)  # header + its record(s)
    # A hard link chosen without its inode's first name brings the data under its own name.
    link = os.path.join(tree, "d0", "big-hardlink")
    lab.clients.restore(r["job"], to=str(tmp_path / "link"), files=link)
    with open(str(tmp_path / "link") + link, "rb") as a, open(link, "rb") as b:
        assert a.read() == b.read()


def test_the_schedule_calls_the_agent_and_restores_to_it(lab, tmp_path):
    src = make_tree(str(tmp_path / "src"), files=100, seed=3)
    lab.clients.register("c1", paths=[src])
    lab.policy(schedule="0 2 * * *")
    ag = agent.Agent(lab.address, lab.tls, "c1", [src])
    conn = ag.connect()
    t = threading.Thread(target=lambda: [None for _ in iter(lambda: ag.serve_once(conn), False)], daemon=True)
    t.start()
    try:
        wait_for(lambda: "c1" in lab.clients.agents)
        assert lab.clients.listing()[0]["connected"]
        lab.engine.tick()  # the first tick only learns the schedule
        lab.clock.advance(86400)
        started = lab.engine.tick()
        assert started, started
        job = wait_for(lambda: next((j for j in lab.engine.catalog.jobs("p") if j["status"] == "done"), None))
        assert job["source"] == "client:c1" and job["level"] == "full"
        assert len(files_of(lab, job["id"])) > 100
        target = str(tmp_path / "back")
        res = lab.clients.restore(job["id"], to_client="c1", target=target, files="*/d1/*")
        assert res["status"] == "done" and res["files"] >= 1
        for p in files_of(lab, job["id"]):
            if "/d1/" in p and os.path.isfile(p) and not os.path.islink(p):
                with open(target + p, "rb") as a, open(p, "rb") as b:
                    assert a.read() == b.read()
    finally:
        ag.close()
        t.join(10)


def wait_for(fn, timeout: float = 60.0):
    """Wait for a result another thread produces (not a timing assumption: the deadline only
    bounds a hang)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = fn()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("timed out")


# -- the six failure points -----------------------------------------------------------------------
def test_1_unreachable_or_cut_fails_with_the_reason_and_retries(lab, tmp_path):
    src = make_tree(str(tmp_path / "src"), files=200, seed=4)
    lab.clients.register("c1", paths=[src])
    lab.policy(retries=2, retry_delay="5m")
    job = lab.engine.run("p", None)  # no agent connected: unreachable, tried 1 + 2 times
    assert job["status"] == "failed" and "unreachable" in job["reason"] and "communication" in job["reason"], job
    assert [j["status"] for j in lab.engine.catalog.jobs("p")] == ["failed"] * 3
    with pytest.raises(NotRunning, match="cannot reach"):
        agent.push("127.0.0.1:1", lab.tls, "c1", [src])  # the array unreachable
    # The connection cut mid-stream: the client dies after some frames.
    faults = Faults()
    faults.arm("client.send", "eio", at=40)
    with pytest.raises((NotRunning, OSError)):
        agent.push(lab.address, lab.tls, "c1", [src], faults=faults)
    last = wait_for(lambda: next((j for j in lab.engine.catalog.jobs("p") if j["status"] == "failed"
                                  and "communication" in j["reason"] and j["id"] > 3), None))
    assert not lab.engine.catalog.client_files(last["id"])
    no_job_left_running(lab)
    # The agent's connection is cut mid-stream once: the policy's retry succeeds.
    afaults = Faults()
    afaults.arm("client.send", "eio", at=30)
    ag = agent.Agent(lab.address, lab.tls, "c1", [src], faults=afaults)
    t = threading.Thread(target=ag.serve, daemon=True)
    t.start()
    try:
        wait_for(lambda: "c1" in lab.clients.agents)
        job = lab.engine.run("p", None)
        assert job["status"] == "done", job
        jobs = lab.engine.catalog.jobs("p")
        assert jobs[1]["status"] == "failed" and "communication failure" in jobs[1]["reason"], jobs[1]
    finally:
        ag.close()
        t.join(10)
    no_job_left_running(lab)


def test_2_invalid_credentials_are_refused_before_any_data(lab, tmp_path):
    src = make_tree(str(tmp_path / "src"), files=10, seed=5)
    lab.clients.register("c1", paths=[src])
    lab.policy()
    other = str(tmp_path / "other-ca")
    pki.init_ca(other)
    pki.issue(other, "c1")
    with pytest.raises(Refused) as e:
        agent.push(lab.address, other, "c1", [src])
    assert e.value.code == "credentials"
    expired = str(tmp_path / "expired")
    os.makedirs(expired)
    for f in ("ca.pem", "ca.key"):
        with open(os.path.join(lab.tls, f), "rb") as a, open(os.path.join(expired, f), "wb") as b:
            b.write(a.read())
    pki.issue(expired, "c1", days=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=10))
    with pytest.raises(Refused) as e:
        agent.push(lab.address, expired, "c1", [src])
    assert e.value.code == "credentials"
    with pytest.raises(Refused, match="not a registered backup client") as e:
        agent.push(lab.address, lab.tls, "c2", [src])  # a good certificate, but never registered
    assert e.value.code == "credentials"
    assert lab.engine.catalog.jobs() == []  # refused before any job or data
    assert any(a["action"] == "client.refused" for a in lab.engine.audit.entries())


def test_3_policy_violations_are_refused_and_audited(lab, tmp_path):
    src = make_tree(str(tmp_path / "src"), files=50, seed=6)
    lab.clients.register("c1", paths=[os.path.join(src, "d1")], quota=1 * MiB)
    lab.clients.register("c2", paths=[src], quota=1 * MiB)
    lab.policy("p1", client="c1")
    lab.policy("p2", client="c2")
    with pytest.raises(Refused, match="outside the client's allowed paths") as e:
        agent.push(lab.address, lab.tls, "c1", [src])
    assert e.value.code == "policy"
    with pytest.raises(Refused, match="not bound to policy") as e:
        agent.push(lab.address, lab.tls, "c1", [os.path.join(src, "d1")], policy="p2")
    assert e.value.code == "policy"
    assert lab.engine.catalog.jobs() == []
    with pytest.raises(Refused, match="over its quota") as e:  # found as the data arrives
        agent.push(lab.address, lab.tls, "c2", [src])
    assert e.value.code == "policy"
    job = lab.engine.catalog.jobs("p2")[0]
    assert job["status"] == "failed" and "quota" in job["reason"] and not lab.engine.catalog.client_files(job["id"])
    refused = [a for a in lab.engine.audit.entries() if a["action"] == "client.refused"]
    assert [a["details"]["code"] for a in refused] == ["policy"] * 3, refused
    no_job_left_running(lab)


def test_4_a_wrong_encryption_key_is_refused(lab, tmp_path):
    src = make_tree(str(tmp_path / "src"), files=30, seed=7)
    key, wrong = os.urandom(32), os.urandom(32)
    lab.clients.register("c1", paths=[src], key=key)
    lab.policy()
    for k in (None, wrong):  # no key, or another key: the declared key id differs
        with pytest.raises(Refused, match="incorrect encryption key") as e:
            agent.push(lab.address, lab.tls, "c1", [src], key=k)
        assert e.value.code == "key"
    assert lab.engine.catalog.jobs() == []
    # The right key id declared, but the frames sealed with another key: authentication fails.
    from vstor.backup.client.conn import connect

    conn = connect(lab.address, lab.tls, "c1")
    try:
        doc = agent.hello("c1", "push", [src], None, None, key)
        with pytest.raises(Refused, match="fails authentication") as e:
            agent.backup(conn, doc, [src], wrong)
        assert e.value.code == "key"
    finally:
        conn.close()
    job = lab.engine.catalog.jobs()[0]
    assert job["status"] == "failed" and not lab.engine.catalog.client_files(job["id"])
    ok = agent.push(lab.address, lab.tls, "c1", [src], key=key)
    assert ok["status"] == "done"
    lab.clients.restore(ok["job"], to=str(tmp_path / "r"))
    assert snapshot(str(tmp_path / "r") + src) == snapshot(src)


def test_5_a_byte_changed_in_transit_fails_the_job(lab, tmp_path):
    src = make_tree(str(tmp_path / "src"), files=100, seed=8)
    lab.clients.register("c1", paths=[src])
    lab.policy()
    lab.faults.arm("client.recv.tamper", "torn", at=20)
    with pytest.raises(Refused, match="checksum mismatch") as e:
        agent.push(lab.address, lab.tls, "c1", [src])
    assert e.value.code == "stream"
    job = lab.engine.catalog.jobs()[0]
    assert job["status"] == "failed" and "tampered" in job["reason"], job
    assert not lab.engine.catalog.client_files(job["id"]) and not lab.engine.catalog.job(job["id"])["parts"]
    assert agent.push(lab.address, lab.tls, "c1", [src])["status"] == "done"  # the next one is fine
    no_job_left_running(lab)


def test_6_write_failures_fail_or_span_and_say_which_files_are_safe(tmp_path):
    lab = Lab(tmp_path, capacity=3 * MiB, carts=3)
    try:
        src = make_tree(str(tmp_path / "src"), files=300, seed=9)
        lab.clients.register("c1", paths=[src])
        lab.policy(media=lab.barcodes[:2])
        r = agent.push(lab.address, lab.tls, "c1", [src])  # 2 cartridges hold it: it spans
        job = lab.engine.catalog.job(r["job"])
        assert r["status"] == "done" and len({p["barcode"] for p in job["parts"]}) == 2, job["parts"]
        lab.clients.restore(r["job"], to=str(tmp_path / "span"))
        assert snapshot(str(tmp_path / "span") + src) == snapshot(src)
        # A medium error: the job fails, no file claims safety.
        lab.engine.create_policy(name="q", source="client:c1", library="lib", media=[lab.barcodes[2]])
        lab.faults.arm("client.write", "eio", at=5)
        with pytest.raises(Refused, match="medium error") as e:
            agent.push(lab.address, lab.tls, "c1", [src], policy="q")
        assert e.value.code == "media"
        failed = lab.engine.catalog.jobs("q")[0]
        assert failed["status"] == "failed" and not lab.engine.catalog.client_files(failed["id"])
        # The end of the last cartridge: part 0 is closed on the media, its files are safe.
        big = make_tree(str(tmp_path / "big"), files=100, seed=10)
        for i in range(3):
            with open(os.path.join(big, f"x{i}"), "wb") as f:
                f.write(os.urandom(3 * MiB))
        lab.engine.create_policy(name="r", source="client:c1", library="lib", media=[lab.barcodes[2]])
        lab.engine.catalog.put_client(lab.engine.catalog.client("c1") | {"paths": [src, big]})
        with pytest.raises(Refused) as e:
            agent.push(lab.address, lab.tls, "c1", [big], policy="r")
        assert e.value.code == "media"
        end = lab.engine.catalog.jobs("r")[0]
        safe = lab.engine.catalog.client_files(end["id"])
        assert end["status"] == "failed" and "files are safe" in end["reason"], end
        assert 0 < len(safe) < 110, len(safe)
        lab.clients.restore(end["id"], to=str(tmp_path / "safe"))
        for f in safe:
            if f["type"] == "file":
                with open(str(tmp_path / "safe") + f["path"], "rb") as a, open(f["path"], "rb") as b:
                    assert a.read() == b.read()
        no_job_left_running(lab)
    finally:
        lab.close()


def test_bad_input_is_one_clear_error(lab, tmp_path):
    with pytest.raises(UsageError, match="not an absolute path"):
        lab.clients.register("c1", paths=["relative"])
    lab.clients.register("c1", paths=["/srv"])
    with pytest.raises(UsageError, match="already registered"):
        lab.clients.register("c1")
    lab.policy()
    with pytest.raises(Exception, match="source of policies p"):
        lab.clients.remove("c1")
    assert wire.key_id(b"k" * 32) == wire.key_id(b"k" * 32) != wire.key_id(b"j" * 32)


def test_a_version_1_catalog_migrates_to_the_client_tables_keeping_its_jobs(tmp_path):
    import sqlite3

    from vstor.backup import _catalog_schema as sch
    from vstor.backup.catalog import BackupCatalog
    from vstor.clock import ManualClock

    path = str(tmp_path / "catalog.db")
    db = sqlite3.connect(path)
    for stmt in sch.SCHEMA.split(";"):  # version 1 is the engine's schema without the client tables
        if stmt.strip():
            db.execute(stmt)
    db.execute("INSERT INTO jobs(policy, level, source, status, created, expires) "
               "VALUES ('p', 'full', 'v', 'done', 1, 2)")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    cat = BackupCatalog(path, ManualClock())
    try:
        assert cat.job(1)["status"] == "done"
        cat.put_client({"name": "c1", "paths": ["/srv"], "quota": None, "key_id": None})
        assert [c["name"] for c in cat.clients()] == ["c1"] and cat.client_files(1) == []
    finally:
        cat.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == sch.VERSION == 3


@pytest.mark.root
def test_a_drill_of_a_client_policy_restores_its_tree_and_reads_it(lab, tmp_path):
    src = make_tree(str(tmp_path / "src"), files=50, seed=12)
    lab.clients.register("c1", paths=[src])
    lab.policy()
    assert agent.push(lab.address, lab.tls, "c1", [src])["status"] == "done"
    d = lab.engine.drills.run("p")
    assert d["status"] == "passed" and d["kind"] == "client" and d["check"] == "read every file", d
    assert d["bytes"] > 3 * MiB and not os.path.exists(d["scratch"]["dir"])


def test_the_walk_ahead_hands_its_error_to_the_sender(tmp_path):
    def entries():
        yield {"path": "/a", "type": "dir", "size": 0}
        raise UsageError("cannot back up /b: No such file or directory")

    got = []
    with pytest.raises(UsageError, match="cannot back up /b"):
        for e in agent.prefetched(entries(), ahead=1):
            got.append(e["path"])
    assert got == ["/a"]
    stopped = agent.prefetched(iter([{"path": f"/{i}", "type": "dir", "size": 0} for i in range(100)]), ahead=2)
    assert next(stopped)["path"] == "/0"
    stopped.close()  # the sender stops early: the walking thread is released, nothing hangs
