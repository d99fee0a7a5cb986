"""Schema, row conversion and the multi-statement steps of the backup catalog (private to catalog.py).

Every function here runs inside a transaction the caller holds; none commits.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from vstor.backup._client_schema import CLIENT_SCHEMA
from vstor.backup.drill._schema import DRILL_SCHEMA
from vstor.errors import AlreadyExists, FormatError, NotFound, UsageError

VERSION = 3
SCHEMA = """
CREATE TABLE policies (name TEXT PRIMARY KEY, doc TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE media (
    barcode TEXT PRIMARY KEY, library TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'scratch',
    location TEXT NOT NULL DEFAULT 'library', bytes INTEGER NOT NULL DEFAULT 0, files INTEGER NOT NULL DEFAULT 0,
    first_written REAL, last_written REAL, worm INTEGER NOT NULL DEFAULT 0,
    recycle_count INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, policy TEXT NOT NULL, level TEXT NOT NULL, source TEXT NOT NULL,
    base_job INTEGER, key_id INTEGER, status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL, started REAL, ended REAL, expires REAL NOT NULL, snapshot TEXT,
    bytes INTEGER NOT NULL DEFAULT 0, stored INTEGER NOT NULL DEFAULT 0, sha256 TEXT,
    verify TEXT, verify_time REAL, verify_reason TEXT NOT NULL DEFAULT '');
CREATE INDEX jobs_policy ON jobs(policy, status);
CREATE TABLE parts (
    job INTEGER NOT NULL REFERENCES jobs(id), part INTEGER NOT NULL, barcode TEXT NOT NULL, library TEXT NOT NULL,
    file INTEGER NOT NULL, first_block INTEGER NOT NULL, last_block INTEGER NOT NULL, bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL, PRIMARY KEY (job, part));
CREATE INDEX parts_barcode ON parts(barcode);
CREATE TABLE volumes (
    job INTEGER NOT NULL REFERENCES jobs(id), name TEXT NOT NULL, size INTEGER NOT NULL, bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL, PRIMARY KEY (job, name));
CREATE TABLE restores (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job INTEGER NOT NULL REFERENCES jobs(id), target TEXT NOT NULL,
    started REAL NOT NULL, ended REAL NOT NULL, bytes INTEGER NOT NULL, status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '');
"""
# Additive steps: MIGRATIONS[v] turns a version v-1 catalog into version v (run in order, in the
# caller's transaction). A new catalog gets SCHEMA and then every step.
MIGRATIONS = {
    2: DRILL_SCHEMA,  # restore drills (drill/catalog.py)
    3: CLIENT_SCHEMA,  # backup clients (_client_schema.py, client/)
}

MEDIA_STATES = ("scratch", "append", "full", "used", "recycle", "offsite", "error")
LOCATIONS = ("library", "offsite")
JOB_STATUSES = ("waiting", "running", "done", "failed", "expired")
VERIFY = ("ok", "failed", "skipped", None)
LEVELS = ("full", "incremental", "differential")
MEDIA_FIELDS = {"library", "state", "location", "bytes", "files", "first_written", "last_written", "worm",
                "recycle_count"}
JOB_FIELDS = {"status", "reason", "started", "ended", "snapshot", "bytes", "stored", "sha256", "verify",
              "verify_time", "verify_reason", "expires", "key_id"}
_CHOICES = {"state": MEDIA_STATES, "location": LOCATIONS, "status": JOB_STATUSES, "verify": VERIFY}


def migrate(c: sqlite3.Connection, path: str) -> None:
    """Create the schema in an empty file, or bring an older catalog up to VERSION with the
    additive MIGRATIONS; refuse a catalog from a newer vstor."""
    have = c.execute("PRAGMA user_version").fetchone()[0]
    if have == 0:
        _script(c, SCHEMA)
        have = 1
    if have < VERSION:
        for v in range(have + 1, VERSION + 1):
            _script(c, MIGRATIONS[v])
        c.execute(f"PRAGMA user_version={VERSION}")
    elif have > VERSION:
        raise FormatError(f"{path} is a version {have} backup catalog; this vstor reads version {VERSION}: "
                          "upgrade vstor")


def _script(c: sqlite3.Connection, script: str) -> None:
    for stmt in script.split(";"):
        if stmt.strip():
            c.execute(stmt)


def checked_fields(fields: dict[str, Any], allowed: set[str], what: str) -> str:
    """The SET clause for ``fields``; UsageError for an unknown field or value."""
    if not fields:
        raise UsageError(f"nothing to change on the {what}")
    for k, v in fields.items():
        if k not in allowed:
            raise UsageError(f"{what} has no field {k!r}; the fields are {', '.join(sorted(allowed))}")
        if k in _CHOICES and v not in _CHOICES[k]:
            raise UsageError(f"{what} {k} {v!r} is not one of {', '.join(map(str, _CHOICES[k]))}")
    return ", ".join(f"{k}=?" for k in fields)


def policy_dict(row: sqlite3.Row) -> dict:
    return {**json.loads(row["doc"]), "name": row["name"], "created": row["created"], "updated": row["updated"]}


def media_dict(c: sqlite3.Connection, barcode: str) -> dict | None:
    row = c.execute("SELECT m.*, (SELECT COUNT(DISTINCT job) FROM parts p WHERE p.barcode=m.barcode) AS jobs "
                    "FROM media m WHERE barcode=?", (barcode,)).fetchone()
    if row is None:
        return None
    d = dict(row)
    d.pop("created")
    d["worm"] = bool(d["worm"])
    return d


def need_job(c: sqlite3.Connection, job: int) -> sqlite3.Row:
    row = c.execute("SELECT * FROM jobs WHERE id=?", (job,)).fetchone()
    if row is None:
        raise NotFound(f"no backup job {job} (see 'vstor backup jobs')")
    return row


def job_dict(c: sqlite3.Connection, row: sqlite3.Row, full: bool = False) -> dict:
    d = dict(row)
    if full:
        d["parts"] = [dict(r) for r in c.execute("SELECT * FROM parts WHERE job=? ORDER BY part", (d["id"],))]
        d["volumes"] = [dict(r) for r in c.execute("SELECT * FROM volumes WHERE job=? ORDER BY rowid", (d["id"],))]
    return d


def restore_dict(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["seconds"] = max(0.0, d["ended"] - d["started"])
    d["mb_per_s"] = d["bytes"] / 1e6 / d["seconds"] if d["seconds"] > 0 else None
    return d


def insert_part(c: sqlite3.Connection, job: int, values: tuple, ignore: bool = False) -> bool:
    need_job(c, job)
    verb = "INSERT OR IGNORE" if ignore else "INSERT"
    try:
        cur = c.execute(f"{verb} INTO parts(job, part, barcode, library, file, first_block, last_block, bytes, "
                        "sha256) VALUES (?,?,?,?,?,?,?,?,?)", (job, *values))
    except sqlite3.IntegrityError:
        raise AlreadyExists(f"part {values[0]} of backup job {job} is already recorded") from None
    return cur.rowcount == 1


def chain(c: sqlite3.Connection, job_id: int) -> list[dict]:
    """Follow base_job from ``job_id`` down to its full; every link must be 'done'."""
    out: list[dict] = []
    want: int | None = job_id
    while want is not None:
        row = c.execute("SELECT * FROM jobs WHERE id=?", (want,)).fetchone()
        who = "" if want == job_id else f", which backup job {job_id} builds on,"
        if row is None:
            raise UsageError(f"the chain of backup job {job_id} is broken: job {want}{who} is not in the catalog; "
                             "restore from an older full or import the media that hold it")
        if row["status"] != "done":
            raise UsageError(f"the chain of backup job {job_id} is broken: job {want}{who} is {row['status']}; "
                             "restore an older job (see 'vstor backup jobs')")
        if any(j["id"] == want for j in out):
            raise UsageError(f"the chain of backup job {job_id} loops at job {want}: rebuild the catalog from media")
        out.append(dict(row))
        want = None if row["level"] == "full" else row["base_job"]
        if want is None and row["level"] != "full":
            raise UsageError(f"the chain of backup job {job_id} is broken: {row['level']} job {row['id']} "
                             "has no base job")
    out.reverse()
    return out


def import_job(c: sqlite3.Connection, header: dict, place: dict, now: float) -> bool:
    try:
        job = int(header["job"])
        new = c.execute(
            "INSERT OR IGNORE INTO jobs(id, policy, level, source, base_job, key_id, status, created, started, "
            "ended, expires, snapshot, bytes, stored, sha256) VALUES (?,?,?,?,?,?,'done',?,?,?,?,?,?,?,?)",
            (job, header["policy"], header["level"], header["source"], header.get("base_job"),
             header.get("key_id"), header.get("created", now), header.get("started"), header.get("ended"),
             header.get("expires", now), header.get("snapshot"), header.get("bytes", 0),
             header.get("stored", 0), header.get("sha256"))).rowcount == 1
        for v in header.get("volumes", ()) if new else ():
            c.execute("INSERT OR IGNORE INTO volumes(job, name, size, bytes, sha256) VALUES (?,?,?,?,?)",
                      (job, v["name"], v["size"], v["bytes"], v["sha256"]))
        code = place["barcode"]
        c.execute("INSERT OR IGNORE INTO media(barcode, library, state, worm, created) VALUES (?,?,'used',?,?)",
                  (code, place["library"], int(bool(place.get("worm", False))), now))
        fields = ("part", "barcode", "library", "file", "first_block", "last_block", "bytes", "sha256")
        added = insert_part(c, job, tuple(place[k] for k in fields), ignore=True)
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"the job header on the medium lacks or garbles {e}: the medium cannot be imported") \
            from None
    return new or added
