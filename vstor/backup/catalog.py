"""The backup catalog: policies, media, jobs and where each job lies, in one SQLite file.

Modelled on the Bareos Job / Media / JobMedia tables (see docs/reference backup.md §1).

Guarantees:
* Every public method is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``): after it returns the
  change is durable (WAL, ``synchronous=FULL``); if it raises, nothing of it is stored.
* One connection, guarded by a lock owned by the catalog: methods may be called from any thread.
* Where the database is comes from a ``catalogdb.Databases`` given to the constructor (a file in
  POOL/backup, or RADOS through Ceph's SQLite VFS); the guarantees hold for both.
* Crash safety: at open, every job still 'waiting' or 'running' was cut short by a stop or crash
  of the daemon; it becomes 'failed' with a reason, and its id is listed in ``recovered_jobs``.
  A job is never left half-present: it is restorable only once it is 'done'.
* The schema is versioned (``PRAGMA user_version``); a newer catalog is refused, never altered.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from typing import Any

from vstor.backup import _catalog_schema as sch
from vstor.backup import _client_schema as csch
from vstor.backup.catalogdb import Databases, LocalDatabases
from vstor.backup.sqlitefile import SqliteFile
from vstor.clock import Clock
from vstor.errors import AlreadyExists, Busy, FormatError, NotFound, UsageError

INTERRUPTED = "interrupted: the array daemon stopped or crashed during the job"


class BackupCatalog(SqliteFile):
    """The catalog at ``path`` (the engine uses POOL/backup/catalog.db), or the database named
    ``path`` in ``databases`` (the engine's: catalog.db of the pool's kind)."""

    def __init__(self, path: str, clock: Clock, databases: Databases | None = None) -> None:
        self.databases = databases or LocalDatabases("")
        self.name = path
        self.path = self.databases.where(path)
        self.clock = clock
        self._lock = threading.RLock()
        self._db = None
        try:
            self._db: sqlite3.Connection | None = self.databases.connect(path)
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA journal_mode={self.databases.journal_mode}")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._tx() as c:
                sch.migrate(c, self.path)
                now = self.clock.time()
                rows = c.execute("SELECT id FROM jobs WHERE status IN ('waiting','running') ORDER BY id").fetchall()
                self.recovered_jobs: list[int] = [r[0] for r in rows]
                c.execute("UPDATE jobs SET status='failed', reason=?, ended=COALESCE(ended, ?) "
                          "WHERE status IN ('waiting','running')", (INTERRUPTED, now))
        except sqlite3.DatabaseError as e:
            self.close()
            raise FormatError(f"{self.path} is not a usable backup catalog ({e}); rebuild it from the media "
                              "with the catalog import, or restore a copy of it") from None
        except BaseException:
            self.close()
            raise

    # -- policies --------------------------------------------------------------------------
    def put_policy(self, policy: dict) -> None:
        """Create or replace a policy (a dict with at least "name"), stored as JSON."""
        name = policy.get("name")
        if not isinstance(name, str) or not name:
            raise UsageError("a backup policy needs a non-empty \"name\"")
        doc = json.dumps(policy, sort_keys=True)
        now = self.clock.time()
        with self._tx() as c:
            c.execute("INSERT INTO policies(name, doc, created, updated) VALUES (?,?,?,?) "
                      "ON CONFLICT(name) DO UPDATE SET doc=excluded.doc, updated=excluded.updated",
                      (name, doc, now, now))

    def policy(self, name: str) -> dict:
        with self._tx() as c:
            row = c.execute("SELECT * FROM policies WHERE name=?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no backup policy named {name!r} (see 'vstor backup policy list')")
        return sch.policy_dict(row)

    def policies(self) -> list[dict]:
        with self._tx() as c:
            return [sch.policy_dict(r) for r in c.execute("SELECT * FROM policies ORDER BY name")]

    def delete_policy(self, name: str) -> None:
        """Delete a policy; its jobs stay in the catalog (they remain restorable). Busy while one runs."""
        with self._tx() as c:
            if c.execute("SELECT 1 FROM policies WHERE name=?", (name,)).fetchone() is None:
                raise NotFound(f"no backup policy named {name!r} (see 'vstor backup policy list')")
            busy = c.execute("SELECT id FROM jobs WHERE policy=? AND status IN ('waiting','running')",
                             (name,)).fetchone()
            if busy is not None:
                raise Busy(f"backup job {busy[0]} of policy {name!r} is running: wait for it or cancel it, "
                           "then delete the policy")
            c.execute("DELETE FROM policies WHERE name=?", (name,))

    # -- media -----------------------------------------------------------------------------
    def add_media(self, barcode: str, library: str, worm: bool) -> dict:
        """Register a cartridge, state 'scratch', in the library."""
        with self._tx() as c:
            if c.execute("SELECT 1 FROM media WHERE barcode=?", (barcode,)).fetchone():
                raise AlreadyExists(f"cartridge {barcode} is already in the backup catalog")
            c.execute("INSERT INTO media(barcode, library, worm, created) VALUES (?,?,?,?)",
                      (barcode, library, int(bool(worm)), self.clock.time()))
            row = sch.media_dict(c, barcode)
            assert row is not None  # inserted just above, in this transaction
            return row

    def media(self, barcode: str) -> dict | None:
        with self._tx() as c:
            return sch.media_dict(c, barcode)

    def set_media(self, barcode: str, **fields: Any) -> None:
        """Update media fields (state, location, bytes, files, first_written, last_written, ...)."""
        sets = sch.checked_fields(fields, sch.MEDIA_FIELDS, "cartridge")
        with self._tx() as c:
            cur = c.execute(f"UPDATE media SET {sets} WHERE barcode=?", (*fields.values(), barcode))
            if cur.rowcount == 0:
                raise NotFound(f"cartridge {barcode} is not in the backup catalog (see 'vstor backup media')")

    def media_list(self, library: str | None = None) -> list[dict]:
        with self._tx() as c:
            codes = [r[0] for r in c.execute("SELECT barcode FROM media WHERE ?1 IS NULL OR library=?1 "
                                             "ORDER BY barcode", (library,))]
            return [row for b in codes if (row := sch.media_dict(c, b)) is not None]

    def media_jobs(self, barcode: str) -> list[int]:
        """Ids of the jobs with a part on the cartridge, ascending."""
        with self._tx() as c:
            return [r[0] for r in c.execute("SELECT DISTINCT job FROM parts WHERE barcode=? ORDER BY job",
                                            (barcode,))]

    # -- jobs ------------------------------------------------------------------------------
    def new_job(self, policy: str, level: str, source: str, base_job: int | None, key_id: int | None,
                expires: float) -> int:
        """A new job in status 'waiting'; returns its id (ids are never reused)."""
        if level != "full" and base_job is None:
            raise UsageError(f"a {level} backup needs a base job; run a full backup first")
        if level not in sch.LEVELS:
            raise UsageError(f"backup level {level!r} is not one of {', '.join(sch.LEVELS)}")
        with self._tx() as c:
            base = None if base_job is None else sch.need_job(c, base_job)["status"]
            if base not in (None, "done"):
                raise UsageError(f"backup job {base_job} is {base}; the {level} backup must build on a done "
                                 "job: run a full backup")
            cur = c.execute("INSERT INTO jobs(policy, level, source, base_job, key_id, expires, status, created) "
                            "VALUES (?,?,?,?,?,?,'waiting',?)",
                            (policy, level, source, base_job, key_id, expires, self.clock.time()))
            return int(cur.lastrowid or 0)

    def set_job(self, job: int, **fields: Any) -> None:
        sets = sch.checked_fields(fields, sch.JOB_FIELDS, "job")
        with self._tx() as c:
            if c.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*fields.values(), job)).rowcount == 0:
                raise NotFound(f"no backup job {job} (see 'vstor backup jobs')")

    def add_part(self, job: int, part: int, barcode: str, library: str, file: int, first_block: int,
                 last_block: int, bytes: int, sha256: str) -> None:
        """Record where part ``part`` of a job lies; the cartridge's counters are the engine's to set."""
        with self._tx() as c:
            sch.insert_part(c, job, (part, barcode, library, file, first_block, last_block, bytes, sha256))

    def add_volume(self, job: int, name: str, size: int, bytes: int, sha256: str) -> None:
        with self._tx() as c:
            sch.need_job(c, job)
            c.execute("INSERT INTO volumes(job, name, size, bytes, sha256) VALUES (?,?,?,?,?)",
                      (job, name, size, bytes, sha256))

    def job(self, job_id: int) -> dict:
        """All fields of a job plus "parts" (in part order) and "volumes"."""
        with self._tx() as c:
            return sch.job_dict(c, sch.need_job(c, job_id), full=True)

    def jobs(self, policy: str | None = None, status: str | None = None) -> list[dict]:
        """Jobs, newest first, without parts and volumes."""
        with self._tx() as c:
            rows = c.execute("SELECT * FROM jobs WHERE (?1 IS NULL OR policy=?1) AND (?2 IS NULL OR status=?2) "
                             "ORDER BY id DESC", (policy, status)).fetchall()
            return [sch.job_dict(c, r) for r in rows]

    def chain(self, job_id: int) -> list[dict]:
        """The full and the incrementals up to ``job_id``, oldest first, all 'done'; UsageError if broken."""
        with self._tx() as c:
            return sch.chain(c, job_id)

    def last_done(self, policy: str) -> dict | None:
        return self._last(policy, "")

    def last_full(self, policy: str) -> dict | None:
        return self._last(policy, "AND level='full'")

    def _last(self, policy: str, extra: str) -> dict | None:
        with self._tx() as c:
            row = c.execute(f"SELECT * FROM jobs WHERE policy=? AND status='done' {extra} ORDER BY id DESC",
                            (policy,)).fetchone()
            return None if row is None else sch.job_dict(c, row)

    def expire(self, jobs: list[int], recycle: list[str]) -> None:
        """Mark jobs 'expired' and cartridges 'recycle', in one transaction (see retention.apply_expiry).

        Only jobs still 'done' or 'failed' change, and a cartridge only if every job on it is then
        expired (and it is neither WORM nor offsite), so a plan made before a concurrent change
        cannot expire a job it did not consider. recycle_count counts these marks."""
        with self._tx() as c:
            c.executemany("UPDATE jobs SET status='expired' WHERE id=? AND status IN ('done','failed')",
                          [(j,) for j in jobs])
            c.executemany("UPDATE media SET state='recycle', recycle_count=recycle_count+1 WHERE barcode=? "
                          "AND worm=0 AND location='library' AND NOT EXISTS (SELECT 1 FROM parts p "
                          "JOIN jobs j ON j.id=p.job WHERE p.barcode=media.barcode AND j.status!='expired')",
                          [(b,) for b in recycle])

    # -- restores --------------------------------------------------------------------------
    def add_restore(self, job: int, target: str, started: float, ended: float, bytes: int, status: str,
                    reason: str = "") -> int:
        with self._tx() as c:
            sch.need_job(c, job)
            cur = c.execute("INSERT INTO restores(job, target, started, ended, bytes, status, reason) "
                            "VALUES (?,?,?,?,?,?,?)", (job, target, started, ended, bytes, status, reason))
            return int(cur.lastrowid or 0)

    def restores(self, policy: str | None = None) -> list[dict]:
        """Restores, newest first, each with its job's "policy", "seconds" and "mb_per_s" (10^6 B/s)."""
        with self._tx() as c:
            rows = c.execute("SELECT r.*, j.policy FROM restores r JOIN jobs j ON j.id=r.job "
                             "WHERE ?1 IS NULL OR j.policy=?1 ORDER BY r.id DESC", (policy,)).fetchall()
        return [sch.restore_dict(r) for r in rows]

    # -- rebuild from media ----------------------------------------------------------------
    def import_part(self, job: int, part: int, barcode: str, library: str, file: int, first_block: int,
                    last_block: int, bytes: int, sha256: str) -> bool:
        """Add a part read back from media; True if new, False if already known (a no-op)."""
        with self._tx() as c:
            return sch.insert_part(c, job, (part, barcode, library, file, first_block, last_block, bytes, sha256),
                                   ignore=True)

    def import_job(self, header: dict, place: dict) -> bool:
        """Rebuild a job and one of its parts from the header written on the medium.

        ``header``: "job" (the original id), "policy", "level", "source", optional "base_job",
        "key_id", "expires", "created", "started", "ended", "snapshot", "bytes", "stored",
        "sha256" and "volumes" (a list of {"name", "size", "bytes", "sha256"}).
        ``place``: "part", "barcode", "library", "file", "first_block", "last_block", "bytes",
        "sha256" and optional "worm". The job comes back 'done' with verify None; an unknown
        cartridge is added in state 'used'. Idempotent: True if anything new was stored."""
        with self._tx() as c:
            return sch.import_job(c, header, place, self.clock.time())

    # -- backup clients (schema version 2) ---------------------------------------------------
    def put_client(self, doc: dict) -> None:
        """Register or update a backup client (a dict with "name", "paths", "quota", "key_id")."""
        with self._tx() as c:
            csch.put_client(c, doc, self.clock.time())

    def client(self, name: str) -> dict:
        with self._tx() as c:
            return csch.client(c, name)

    def clients(self) -> list[dict]:
        with self._tx() as c:
            return [csch.client(c, r[0]) for r in c.execute("SELECT name FROM clients ORDER BY name")]

    def delete_client(self, name: str) -> None:
        with self._tx() as c:
            csch.client(c, name)
            c.execute("DELETE FROM clients WHERE name=?", (name,))

    def end_client_job(self, job: int, parts: list[tuple], files: list[dict], deleted: list[str],
                       **fields: Any) -> None:
        """One transaction: a client job's parts, its files (those safe on the media) and deletions,
        and its end fields (status 'done' or 'failed'). Nothing of it is stored if it raises."""
        sets = sch.checked_fields(fields, sch.JOB_FIELDS, "job")
        with self._tx() as c:
            for values in parts:
                sch.insert_part(c, job, values)
            csch.insert_files(c, job, files, deleted)
            c.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*fields.values(), job))

    def client_files(self, job: int, prefix: str = "") -> list[dict]:
        """The files a client job holds (those of a failed job: the ones safe on its media),
        only those whose path starts with ``prefix`` if given."""
        with self._tx() as c:
            sch.need_job(c, job)
            return csch.files(c, job, prefix)

    def client_listed(self, job: int) -> bool:
        """Whether client job ``job`` has a file list (rows of files or of deletions)."""
        with self._tx() as c:
            return csch.listed(c, job)

    def import_client_files(self, job: int, files: list[dict], deleted: list[str], **fields: Any) -> bool:
        """One transaction: a client job's file list and deletions read back from its media
        (rebuild), and job fields; False (a no-op) if the job has a file list already."""
        sets = sch.checked_fields(fields, sch.JOB_FIELDS, "job") if fields else ""
        with self._tx() as c:
            sch.need_job(c, job)
            if csch.listed(c, job):
                return False
            csch.insert_files(c, job, files, deleted)
            if fields:
                c.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*fields.values(), job))
            return True

    def client_deleted(self, job: int) -> list[str]:
        with self._tx() as c:
            return csch.deleted(c, job)
