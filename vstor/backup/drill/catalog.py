"""The restore drill records of the backup catalog: drill definitions and drill history.

The tables live in the backup catalog file (schema version 2, created by the catalog's
migration, ``drill/_schema.py``); this class keeps its own SQLite connection and lock, so it
never touches the BackupCatalog's.

Guarantees:
* Every public method is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), durable on return.
* A drill is recorded 'running' before it touches anything, with the scratch it is about to make
  (``scratch``: volumes, netns, loop devices, mounts, files), so a drill cut short by a crash is
  found at the next open (``interrupted``): it is then 'failed' with a reason, and the caller
  removes its scratch.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from typing import Any

from vstor.backup.catalogdb import Databases, LocalDatabases
from vstor.backup.drill._schema import DRILL_STATUSES
from vstor.backup.sqlitefile import SqliteFile
from vstor.clock import Clock
from vstor.errors import FormatError, NotFound, UsageError

__all__ = ["INTERRUPTED", "DrillCatalog"]

INTERRUPTED = "interrupted: the array daemon stopped or crashed during the drill; its scratch was removed"
_FIELDS = {"job", "status", "reason", "ended", "bytes", "restore_s", "check_s", "exit_code", "output", "scratch"}


def _drill(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["scratch"] = json.loads(d["scratch"] or "{}")
    d["check"] = d.pop("check_cmd")
    return d


def _definition(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["check"] = d.pop("check_cmd")
    return d


class DrillCatalog(SqliteFile):
    def __init__(self, path: str, clock: Clock, databases: Databases | None = None) -> None:
        """``path``: the catalog's file, or its name in ``databases`` (BackupCatalog's ``name``)."""
        databases = databases or LocalDatabases("")
        self.path, self.clock = databases.where(path), clock
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = databases.connect(path)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA synchronous=FULL")
        have = self._db.execute("PRAGMA user_version").fetchone()[0]
        if have < 2:
            self.close()
            raise FormatError(f"{self.path} is a version {have} backup catalog without drill tables: open it with "
                              "the backup engine first (it migrates the catalog)")
        with self._tx() as c:
            rows = c.execute("SELECT * FROM drills WHERE status='running' ORDER BY id").fetchall()
            self.interrupted: list[dict] = [_drill(r) for r in rows]
            c.execute("UPDATE drills SET status='failed', reason=?, ended=COALESCE(ended, ?) WHERE status='running'",
                      (INTERRUPTED, self.clock.time()))

    # -- definitions ---------------------------------------------------------------------------
    def define(self, policy: str, schedule: str | None, check: str | None, timeout: float) -> dict:
        """Create or replace the drill definition of ``policy`` (its last fire is kept)."""
        now = self.clock.time()
        with self._tx() as c:
            c.execute("INSERT INTO drill_defs(policy, schedule, check_cmd, timeout, created) VALUES (?,?,?,?,?) "
                      "ON CONFLICT(policy) DO UPDATE SET schedule=excluded.schedule, check_cmd=excluded.check_cmd, "
                      "timeout=excluded.timeout", (policy, schedule, check, timeout, now))
        return self.definition(policy)

    def definition(self, policy: str) -> dict:
        with self._tx() as c:
            row = c.execute("SELECT * FROM drill_defs WHERE policy=?", (policy,)).fetchone()
        if row is None:
            raise NotFound(f"no restore drill is defined for policy {policy!r} (see 'vstor backup drill list')")
        return _definition(row)

    def definitions(self) -> list[dict]:
        with self._tx() as c:
            return [_definition(r) for r in c.execute("SELECT * FROM drill_defs ORDER BY policy")]

    def remove(self, policy: str) -> dict:
        d = self.definition(policy)
        with self._tx() as c:
            c.execute("DELETE FROM drill_defs WHERE policy=?", (policy,))
        return d

    def record_fire(self, policy: str, when: float) -> None:
        with self._tx() as c:
            c.execute("UPDATE drill_defs SET last_fire=? WHERE policy=?", (when, policy))

    # -- history -------------------------------------------------------------------------------
    def new(self, policy: str, kind: str, check: str, scratch: dict) -> int:
        """A new drill, 'running' from now, with the scratch it is going to make."""
        with self._tx() as c:
            cur = c.execute("INSERT INTO drills(policy, kind, check_cmd, status, started, scratch) "
                            "VALUES (?,?,?,'running',?,?)",
                            (policy, kind, check, self.clock.time(), json.dumps(scratch, sort_keys=True)))
            return int(cur.lastrowid or 0)

    def set(self, drill: int, **fields: Any) -> None:
        bad = set(fields) - _FIELDS
        if bad or fields.get("status", "running") not in DRILL_STATUSES:
            raise UsageError(f"a drill has no field or value {sorted(bad) or fields.get('status')}")
        if "scratch" in fields:
            fields["scratch"] = json.dumps(fields["scratch"], sort_keys=True)
        sets = ", ".join(f"{k}=?" for k in fields)
        with self._tx() as c:
            if c.execute(f"UPDATE drills SET {sets} WHERE id=?", (*fields.values(), drill)).rowcount == 0:
                raise NotFound(f"no restore drill {drill} (see 'vstor backup drills')")

    def drill(self, drill: int) -> dict:
        with self._tx() as c:
            row = c.execute("SELECT * FROM drills WHERE id=?", (drill,)).fetchone()
        if row is None:
            raise NotFound(f"no restore drill {drill} (see 'vstor backup drills')")
        return _drill(row)

    def drills(self, policy: str | None = None) -> list[dict]:
        """Drills, newest first."""
        with self._tx() as c:
            rows = c.execute("SELECT * FROM drills WHERE ?1 IS NULL OR policy=?1 ORDER BY id DESC", (policy,))
            return [_drill(r) for r in rows.fetchall()]
