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

# Rows of ~2 KiB, a transaction every 20; runs until STOP exists. Prints its row count at the end.
WRITER = r"""
import os, sqlite3, sys
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
