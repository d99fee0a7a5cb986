"""Application-consistent database snapshots through the real daemon: a SQLite database on
ext4 on a vstor volume (FUSE + loop), a writer process busy in it, and a snapshot policy that
fires on bytes written with a --pre that takes a consistent SQLite copy and freezes the
filesystem, and a --post that thaws it. The snapshot's clone must hold databases that pass
``PRAGMA integrity_check``."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from harness import Array, run

pytestmark = pytest.mark.root

MiB = 1 << 20

# Rows of ~2 KiB, a transaction every 20, about 4 MB/s (the database stays small to check);
# runs until STOP exists. Prints its row count at the end.
WRITER = r"""
import os, sqlite3, sys, time
db, stop = sys.argv[1], sys.argv[2]
c = sqlite3.connect(db, timeout=60)
c.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB, h TEXT)")
n = 0
while not os.path.exists(stop):
    with c:
        for _ in range(20):
            v = os.urandom(2048)
            c.execute("INSERT INTO t (v, h) VALUES (?, ?)", (v, v.hex()[:16]))
            n += 1
    time.sleep(0.01)
print(n)
"""


def _json(arr: Array, *args: str) -> object:
    return json.loads(arr.vstor(*args, "--json").stdout)


def _check_db(path: str) -> int:
    """integrity_check must say ok, and every row's h must match its v. Returns the row count."""
    c = sqlite3.connect(path)
    try:
        assert c.execute("PRAGMA integrity_check").fetchall() == [("ok",)], path
        rows = c.execute("SELECT v, h FROM t").fetchall()
        assert all(v.hex()[:16] == h for v, h in rows), f"{path}: a row does not match its checksum"
        return len(rows)
    finally:
        c.close()


def test_sqlite_snapshot_by_threshold_with_pre_and_post(array, tmp_path):
    array.create("db", "96M")
    array.vstor("group", "create", "dbg", "--volumes", "db")
    dev = array.attach("db")
    run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", dev])
    mp = array.mount_fs(dev, tmp_path / "live")
    db, stop, log = f"{mp}/app.db", str(tmp_path / "stop"), tmp_path / "hooks.log"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, db, stop], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(db) and time.monotonic() < deadline:
            time.sleep(0.05)
        # VACUUM INTO copies in one read transaction (the writer waits for it); the shell's
        # .backup steps 100 pages at a time and starts over whenever the writer commits.
        pre = (f"echo pre $VSTOR_SNAPSHOT >> {log} && rm -f {mp}/app-backup.db && "
               f"sqlite3 -cmd '.timeout 30000' {db} \"VACUUM INTO '{mp}/app-backup.db'\" && fsfreeze -f {mp}")
        post = f"fsfreeze -u {mp}; echo post $VSTOR_RESULT >> {log}"
        array.vstor("snapshot", "policy", "set", "dbg", "--after-written", "4M", "--min-interval", "1h",
                    "--keep-last", "2", "--pre", pre, "--post", post, "--hook-timeout", "30s")
        snaps: list = []
        deadline = time.monotonic() + 30
        while not snaps and time.monotonic() < deadline:
            time.sleep(0.25)
            snaps = _json(array, "snapshot", "list", "dbg")
        assert len(snaps) == 1, f"no threshold snapshot within 30 s: {snaps}"
        snap = snaps[0]
        assert snap["auto"] and snap["name"].startswith("auto-")
        time.sleep(1.5)  # a few more ticks while the writer goes on: the debounce (1 h) holds
        assert len(_json(array, "snapshot", "list", "dbg")) == 1
        (pol,) = _json(array, "snapshot", "policy", "list")
        assert pol["last_run"]["result"] == "ok" and pol["last_run"]["trigger"] == "written", pol
        assert [h["rc"] for h in pol["last_run"]["hooks"]] == [0, 0], pol
        assert log.read_text().splitlines() == [f"pre {snap['name']}", "post ok"]
        audit = [e for e in _json(array, "audit", "log") if e["action"] == "snapshot.policy_set"]
        assert [e["details"]["pre"] for e in audit] == [pre], audit  # commands run as root: audited
    finally:
        open(stop, "w").close()
        out, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0
    assert int(out) > 0

    out = _json(array, "snapshot", "clone", "dbg", snap["name"], "--as", "c")
    assert out["clones"] == ["c-db"], out
    cdev = array.attach("c-db")
    r = run(["e2fsck", "-fn", cdev], check=False)
    assert r.returncode == 0, f"the frozen snapshot's filesystem is not clean: {r.stdout}{r.stderr}"
    cmp_ = array.mount_fs(cdev, tmp_path / "clone")
    backup_rows = _check_db(f"{cmp_}/app-backup.db")
    live_rows = _check_db(f"{cmp_}/app.db")  # the live file too: frozen, so at most a hot journal
    assert 0 < backup_rows <= live_rows
    array.umount_fs(cmp_)
    array.vstor("volume", "detach", "c-db")
    array.umount_fs(mp)
    array.vstor("volume", "detach", "db")


# -- the admin guide's PostgreSQL example, for real (soak: about a minute) ---------------------
PG_BIN = "/usr/lib/postgresql/15/bin"


def _as_postgres(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["runuser", "-u", "postgres", "--", *cmd], check=check)


@pytest.mark.soak
@pytest.mark.skipif(not os.path.exists(f"{PG_BIN}/postgres"), reason="needs PostgreSQL 15 binaries")
def test_postgresql_snapshot_with_checkpoint_and_fsfreeze(array, tmp_path):
    import shutil
    import tempfile

    # postgres cannot reach tmp_path (pytest makes its base 0700): mount points of its own in /tmp.
    live_dir, clone_dir = (tempfile.mkdtemp(prefix=f"vstor-pg-{p}-") for p in ("live", "clone"))
    started: list[str] = []
    pgbench = None
    try:
        array.create("pg", "1G")
        array.vstor("group", "create", "pgg", "--volumes", "pg")
        dev = array.attach("pg")
        run(["mkfs.ext4", "-q", "-F", dev])
        from pathlib import Path

        mp = array.mount_fs(dev, Path(live_dir))
        os.chmod(mp, 0o755)
        shutil.chown(mp, "postgres", "postgres")
        for d in ("data", "sock"):
            os.mkdir(f"{mp}/{d}")
            shutil.chown(f"{mp}/{d}", "postgres", "postgres")
        _as_postgres(f"{PG_BIN}/initdb", "--no-instructions", "-A", "trust", "--data-checksums", "-D", f"{mp}/data")
        opts = f"-p 54329 -k {mp}/sock -c listen_addresses=''"
        _as_postgres(f"{PG_BIN}/pg_ctl", "-s", "-w", "-D", f"{mp}/data", "-o", opts, "-l", f"{mp}/pg.log", "start")
        started.append(f"{mp}/data")
        conn = ["-h", f"{mp}/sock", "-p", "54329", "-U", "postgres"]
        _as_postgres("pgbench", "-q", "-i", "-s", "4", *conn, "postgres")
        pgbench = subprocess.Popen(["runuser", "-u", "postgres", "--", "pgbench", "-c", "2", "-T", "120", *conn,
                                    "postgres"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2)
        psql = f"psql -X -q -h {mp}/sock -p 54329 -U postgres -c CHECKPOINT"
        array.vstor("snapshot", "policy", "set", "pgg", "--after-written", "32M", "--min-interval", "1h",
                    "--keep-last", "2", "--pre", f"{psql} && fsfreeze -f {mp}", "--post", f"fsfreeze -u {mp}")
        snaps: list = []
        deadline = time.monotonic() + 90
        while not snaps and time.monotonic() < deadline:
            time.sleep(0.5)
            snaps = _json(array, "snapshot", "list", "pgg")
        assert len(snaps) == 1, f"no threshold snapshot within 90 s: {snaps}"
        (pol,) = _json(array, "snapshot", "policy", "list")
        assert pol["last_run"]["result"] == "ok", pol
        assert pgbench.poll() is None, "pgbench stopped while the snapshot was taken"
        pgbench.terminate()
        pgbench.wait(timeout=30)

        array.vstor("snapshot", "clone", "pgg", snaps[0]["name"], "--as", "pgc")
        cdev = array.attach("pgc-pg")
        r = run(["e2fsck", "-fn", cdev], check=False)
        assert r.returncode == 0, f"the frozen snapshot's filesystem is not clean: {r.stdout}{r.stderr}"
        cmp_ = array.mount_fs(cdev, Path(clone_dir))
        os.unlink(f"{cmp_}/data/postmaster.pid")  # the live server's: it is running, so the clone would refuse
        copts = f"-p 54330 -k {cmp_}/sock -c listen_addresses=''"
        _as_postgres(f"{PG_BIN}/pg_ctl", "-s", "-w", "-D", f"{cmp_}/data", "-o", copts, "-l", f"{cmp_}/pg.log",
                     "start")
        started.append(f"{cmp_}/data")
        cconn = ["-h", f"{cmp_}/sock", "-p", "54330", "-U", "postgres"]
        r = _as_postgres("psql", "-X", "-At", *cconn, "-c", "SELECT count(*) FROM pgbench_accounts", "postgres")
        assert r.stdout.strip() == "400000", r.stdout
        r = _as_postgres(f"{PG_BIN}/pg_amcheck", *cconn, "--install-missing", "--heapallindexed", "postgres",
                         check=False)
        assert r.returncode == 0, f"pg_amcheck on the clone: {r.stdout}{r.stderr}"
        log = open(f"{cmp_}/pg.log").read()
        assert "database system is ready to accept connections" in log, log
        assert "redo done" in log, log  # crash recovery from the pre's CHECKPOINT: a short redo
    finally:
        if pgbench is not None and pgbench.poll() is None:
            pgbench.kill()
            pgbench.wait()
        for data in reversed(started):
            _as_postgres(f"{PG_BIN}/pg_ctl", "-s", "-w", "-D", data, "-m", "immediate", "stop", check=False)
        for d in (clone_dir, live_dir):
            subprocess.run(["fsfreeze", "-u", d], capture_output=True)
            subprocess.run(["umount", d], capture_output=True)
            if d in array.mounts:
                array.mounts.remove(d)
            os.rmdir(d)
