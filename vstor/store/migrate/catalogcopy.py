"""The backup catalog (``backup/catalog.db``) of a migrated pool, into the cluster.

A RADOS pool's backup catalog is the SQLite database in Ceph that ``catalogdb.CephDatabases``
opens (libcephsqlite; docs/formats.md, "Cartridges and the backup catalog on RADOS"), not a
file: its SQL dump (schema and rows, a consistent snapshot that includes the WAL) and its
``user_version`` are replayed into the cluster's database in one transaction (SQLite's backup
API would copy the WAL file header, which the VFS cannot open), then verified by comparing
the sha256 of both databases' dumps and user_version (the VFS gives no raw bytes to compare).
``catalog.db-wal`` and ``-shm`` are part of the source database, not copied on their own.
"""

from __future__ import annotations

import hashlib
import sqlite3

from vstor.errors import CorruptData
from vstor.store.backend.base import PoolBackend

__all__ = ["CATALOG_FILE", "SIDE_FILES", "copy_catalog"]

CATALOG_FILE = "backup/catalog.db"
SIDE_FILES = ("backup/catalog.db-wal", "backup/catalog.db-shm")


def _digest(db: sqlite3.Connection) -> str:
    """sha256 of the database's SQL dump and its user_version (the catalog's schema version)."""
    h = hashlib.sha256(b"user_version %d\n" % db.execute("PRAGMA user_version").fetchone()[0])
    for line in db.iterdump():
        h.update(line.encode() + b"\n")
    return h.hexdigest()


def _replace(dst: sqlite3.Connection, src: sqlite3.Connection) -> None:
    """Make ``dst`` hold what ``src`` holds, in one transaction (what a resumed migrate left goes)."""
    dst.execute("BEGIN IMMEDIATE")
    try:
        for kind in ("trigger", "view", "table"):
            for (name,) in dst.execute("SELECT name FROM sqlite_master WHERE type = ? AND name NOT LIKE 'sqlite_%'",
                                       (kind,)).fetchall():
                dst.execute(f'DROP {kind.upper()} IF EXISTS "{name}"')
        for line in src.iterdump():
            if line not in ("BEGIN TRANSACTION;", "COMMIT;"):
                dst.execute(line)
        dst.execute(f"PRAGMA user_version = {int(src.execute('PRAGMA user_version').fetchone()[0])}")
        dst.execute("COMMIT")
    except BaseException:
        dst.execute("ROLLBACK")
        raise


def copy_catalog(source_path: str, dest: PoolBackend, ceph_conf: str | None, ceph_id: str | None) -> str:
    """Copy the catalog at ``source_path`` into ``dest``'s cluster; returns where it went."""
    from vstor.backup.catalogdb import CATALOG, CephDatabases, sqlite_namespace
    from vstor.errors import UsageError
    if not ceph_conf:
        raise UsageError("the backup catalog goes to the cluster: give --ceph-conf FILE or set VSTOR_CEPH_CONF")
    dbs = CephDatabases(getattr(dest, "pool", ""), sqlite_namespace(getattr(dest, "prefix", "")), ceph_conf,
                        ceph_id)
    src = sqlite3.connect(source_path)
    try:
        dst = dbs.connect(CATALOG)
        try:
            _replace(dst, src)
            want, got = _digest(src), _digest(dst)
        finally:
            dst.close()
    finally:
        src.close()
    if want != got:
        raise CorruptData(f"the backup catalog reads back from {dbs.where(CATALOG)} with other contents than "
                          f"{source_path}; the destination is unfinished: run the migrate again with --resume")
    return dbs.where(CATALOG)
