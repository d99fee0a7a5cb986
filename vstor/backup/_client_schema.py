"""The backup catalog's tables for backup clients (schema version 3), and their SQL (private to catalog.py).

Every function runs inside a transaction the caller holds; none commits. Paths are BLOBs (the
client's bytes, ``os.fsencode`` of the protocol's surrogate-escaped str), so any name fits.
"""

from __future__ import annotations

import json
import os
import sqlite3

from vstor.errors import NotFound

CLIENT_SCHEMA = """
CREATE TABLE clients (name TEXT PRIMARY KEY, doc TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE client_files (
    job INTEGER NOT NULL REFERENCES jobs(id), path BLOB NOT NULL, type TEXT NOT NULL, size INTEGER NOT NULL,
    mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL, user TEXT NOT NULL, grp TEXT NOT NULL,
    mtime_ns INTEGER NOT NULL, atime_ns INTEGER NOT NULL, link BLOB NOT NULL, sha256 TEXT, extents TEXT NOT NULL,
    src_job INTEGER NOT NULL, offset INTEGER NOT NULL, data_offset INTEGER NOT NULL, change TEXT NOT NULL,
    PRIMARY KEY (job, path));
CREATE TABLE client_deleted (job INTEGER NOT NULL REFERENCES jobs(id), path BLOB NOT NULL, PRIMARY KEY (job, path));
"""
FILE_COLUMNS = ("path", "type", "size", "mode", "uid", "gid", "user", "grp", "mtime_ns", "atime_ns", "link", "sha256",
                "extents", "src_job", "offset", "data_offset", "change")
CHANGES = ("new", "changed", "same")  # against the base job: sent new, sent changed, or carried over


def put_client(c: sqlite3.Connection, doc: dict, now: float) -> None:
    c.execute("INSERT INTO clients(name, doc, created) VALUES (?,?,?) ON CONFLICT(name) DO UPDATE SET doc=excluded.doc",
              (doc["name"], json.dumps(doc, sort_keys=True), now))


def client(c: sqlite3.Connection, name: str) -> dict:
    row = c.execute("SELECT * FROM clients WHERE name=?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"no backup client named {name!r} (see 'vstor client list'; add it with "
                       "'vstor client register')")
    return json.loads(row["doc"]) | {"name": row["name"], "created": row["created"]}


def file_row(job: int, f: dict) -> tuple:
    """A catalog row from an entry dict (the protocol's, with the array's fields added)."""
    return (job, os.fsencode(f["path"]), f["type"], f["size"], f["mode"], f["uid"], f["gid"], f.get("user", ""),
            f.get("group", ""), f["mtime_ns"], f["atime_ns"], os.fsencode(f.get("link", "")), f.get("sha256"),
            json.dumps(f.get("extents", [])), f["src_job"], f["offset"], f["data_offset"], f["change"])


def insert_files(c: sqlite3.Connection, job: int, files: list[dict], deleted: list[str]) -> None:
    c.executemany(f"INSERT INTO client_files(job, {', '.join(FILE_COLUMNS)}) VALUES ({','.join('?' * 18)})",
                  (file_row(job, f) for f in files))
    c.executemany("INSERT INTO client_deleted(job, path) VALUES (?,?)", ((job, os.fsencode(p)) for p in deleted))


def files(c: sqlite3.Connection, job: int, prefix: str = "") -> list[dict]:
    """The job's entries whose path starts with ``prefix``, in path order, as the protocol's
    dicts (path and link as str)."""
    out = []
    raw = os.fsencode(prefix)
    for r in c.execute("SELECT * FROM client_files WHERE job=? AND substr(path, 1, ?)=? ORDER BY path",
                       (job, len(raw), raw)):
        d = dict(r)
        d.pop("job")
        d["path"], d["link"] = os.fsdecode(d["path"]), os.fsdecode(d["link"])
        d["group"] = d.pop("grp")
        d["extents"] = json.loads(d["extents"])
        out.append(d)
    return out


def listed(c: sqlite3.Connection, job: int) -> bool:
    return c.execute("SELECT EXISTS(SELECT 1 FROM client_files WHERE job=?1) OR "
                     "EXISTS(SELECT 1 FROM client_deleted WHERE job=?1)", (job,)).fetchone()[0] == 1


def deleted(c: sqlite3.Connection, job: int) -> list[str]:
    return [os.fsdecode(r[0]) for r in c.execute("SELECT path FROM client_deleted WHERE job=? ORDER BY path", (job,))]
