"""Where the backup catalog's SQLite database lives: a local file, or RADOS through Ceph's SQLite VFS.

``LocalDatabases(DIR)``: the file ``DIR/NAME`` (mode 0600), as vstor always had it; the catalog
puts it in WAL mode with ``synchronous=FULL``.

``CephDatabases``: the database ``NAME`` in the RADOS namespace ``NAMESPACE`` of a Ceph pool,
opened as ``file:///POOL:NAMESPACE/NAME?vfs=ceph`` through libcephsqlite (Debian package
libsqlite3-mod-ceph), which stripes the database and its rollback journal over RADOS
objects and serialises access with a RADOS lock. Guarantees, with the pragmas it sets on
every connection: ``synchronous=FULL`` makes COMMIT return only after the VFS's xSync, that
is after the OSDs acknowledged the journal and database writes (every replica): a committed
change is durable in the cluster when the call returns, and a crash leaves the database as
of the last commit (SQLite's rollback journal, kept in RADOS, undoes a torn one at the next
open). ``journal_mode=PERSIST`` (the VFS's advice: the journal is invalidated, not deleted;
WAL would need exclusive locking, and the catalog has two connections: catalog and drill
records), ``page_size=65536`` (fewer, larger RADOS operations; for a new database),
``temp_store=MEMORY`` (the VFS has no temporary files). A daemon that died holding the
database's lock blocks the next opener until the lock expires (30 s), which then
blocklists the dead client, so it can never write again. The VFS's own RADOS client
(:func:`vfs_client`) is in the pool lock's holder record, so a takeover fences it too; and
in the daemon every commit that changes rows first asks the OSD whether the pool's RADOS lock
is still this daemon's (``guard``: the backend's ``check_owner``, one round trip), so a
daemon fenced or paused past its lock commits nothing more, also after its blocklist expires.

The VFS is loaded once per process with one cluster connection configured through the
environment (CEPH_CONF, CEPH_ARGS: client id and the op timeouts), so a process reaches the
catalogs of one Ceph cluster. It needs an interpreter whose sqlite3 module may load
extensions (Debian's /usr/bin/python3, hence .venv-rados).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable

from vstor.errors import UsageError
from vstor.store.backend.base import PoolBackend

__all__ = ["CATALOG", "CephDatabases", "Databases", "GuardedConnection", "LocalDatabases", "catalog_databases",
           "sqlite_namespace", "vfs_client"]

CATALOG = "catalog.db"
VFS_LIBRARY = "libcephsqlite.so"
CEPH_PAGE_SIZE = 65536
CEPH_CACHE_PAGES = 1024  # 64 MiB of page cache: the VFS itself caches nothing
NAMESPACE_SUFFIX = "backup"
_SAFE = re.compile(r"[A-Za-z0-9-]")


class Databases(ABC):
    """Opens the SQLite databases of one pool by name."""

    kind: str = ""
    journal_mode: str = ""  # what the catalog asks for on its connection

    @abstractmethod
    def where(self, name: str) -> str:
        """The database's location, for messages."""

    @abstractmethod
    def connect(self, name: str) -> sqlite3.Connection:
        """A connection in autocommit mode (the catalog issues BEGIN/COMMIT), usable from any
        thread under the caller's lock, waiting up to 30 s for another connection's lock."""


class LocalDatabases(Databases):
    kind, journal_mode = "local", "WAL"

    def __init__(self, directory: str) -> None:
        self.dir = directory

    def where(self, name: str) -> str:
        return os.path.join(self.dir, name) if self.dir else name

    def connect(self, name: str) -> sqlite3.Connection:
        path = self.where(name)
        with contextlib.suppress(FileExistsError):  # the catalog is the pool's: owner only
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)


_vfs_lock = threading.Lock()
_vfs_loader: list[sqlite3.Connection] = []  # the connection that loaded the VFS, kept open


def load_vfs(ceph_conf: str, ceph_id: str | None, timeout: int) -> None:
    """Load libcephsqlite once per process, configured for this cluster."""
    with _vfs_lock:
        if _vfs_loader:
            return
        os.environ["CEPH_CONF"] = ceph_conf
        args = [os.environ.get("CEPH_ARGS", "")] + ([f"--id {ceph_id}"] if ceph_id else [])
        args += [f"--rados_osd_op_timeout {timeout}", f"--rados_mon_op_timeout {timeout}",
                 f"--client_mount_timeout {timeout}"]
        os.environ["CEPH_ARGS"] = " ".join(a for a in args if a)
        c = sqlite3.connect(":memory:", check_same_thread=False)
        try:
            c.enable_load_extension(True)
        except AttributeError:
            c.close()
            raise UsageError("the backup catalog of a RADOS pool needs a Python whose sqlite3 loads extensions: "
                             "run vstor from .venv-rados ('make venv-rados')") from None
        try:
            c.load_extension(VFS_LIBRARY)
        except sqlite3.OperationalError as e:
            c.close()
            raise UsageError(f"cannot load Ceph's SQLite VFS ({e}): install libsqlite3-mod-ceph "
                             "('make setup')") from None
        c.enable_load_extension(False)
        _vfs_loader.append(c)


def vfs_client() -> dict | None:
    """The RADOS client of this process's VFS (libcephsqlite's ``ceph_status()``: ``id``, its
    global id, and ``addr``, the address ``osd blocklist add`` fences it by), or None if the
    VFS is not loaded. The pool lock records it, so a takeover fences the catalog too."""
    with _vfs_lock:
        if not _vfs_loader:
            return None
        (raw,) = _vfs_loader[0].execute("SELECT ceph_status()").fetchone()
    return json.loads(raw)


def sqlite_namespace(prefix: str) -> str:
    """The RADOS namespace of a pool's SQLite databases: ``PREFIX/backup`` written with the
    letters libcephsqlite's URI accepts (letters, digits, '-'; any other byte as _XX)."""
    text = f"{prefix}/{NAMESPACE_SUFFIX}"
    return "".join(c if _SAFE.fullmatch(c) else "".join(f"_{b:02x}" for b in c.encode()) for c in text)


class GuardedConnection(sqlite3.Connection):
    """A connection whose write transactions call ``commit_guard`` before their COMMIT
    (backup/sqlitefile.py): it raises OSError to have the transaction rolled back instead."""

    commit_guard: Callable[[], None] | None = None


class CephDatabases(Databases):
    kind, journal_mode = "ceph", "PERSIST"

    def __init__(self, pool: str, namespace: str, ceph_conf: str, ceph_id: str | None = None,
                 timeout: int = 30, guard: Callable[[], None] | None = None) -> None:
        """``guard``: called before each commit that changes rows (the pool backend's
        ``check_owner``: the daemon's catalog commits only while the pool's RADOS lock is its
        own, see docs/architecture.md, "Failover between hosts")."""
        self.pool, self.namespace, self.guard = pool, namespace, guard
        load_vfs(ceph_conf, ceph_id, timeout)

    def where(self, name: str) -> str:
        return f"rados://{self.pool} (namespace {self.namespace}, database {name})"

    def uri(self, name: str) -> str:
        return f"file:///{self.pool}:{self.namespace}/{name}?vfs=ceph"

    def connect(self, name: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.uri(name), uri=True, isolation_level=None, check_same_thread=False, timeout=30,
                             factory=GuardedConnection)
        db.commit_guard = self.guard
        try:
            db.execute(f"PRAGMA page_size={CEPH_PAGE_SIZE}")
            db.execute(f"PRAGMA cache_size={CEPH_CACHE_PAGES}")
            db.execute("PRAGMA temp_store=MEMORY")
            db.execute(f"PRAGMA journal_mode={self.journal_mode}")
        except BaseException:
            db.close()
            raise
        return db


def catalog_databases(pool: str, backend: PoolBackend) -> Databases:
    """The databases of a pool: files in ``POOL/backup``, or in the cluster for a RADOS pool
    (its state directory's stub, or $VSTOR_CEPH_CONF / $VSTOR_CEPH_ID, says how to reach it)."""
    if backend.kind != "rados":
        return LocalDatabases(os.path.join(pool, "backup"))
    from vstor.store.backend.location import CEPH_CONF_ENV, CEPH_ID_ENV
    from vstor.store.backend.stub import read_stub
    stub = read_stub(pool) or {}
    conf = stub.get("ceph_conf") or os.environ.get(CEPH_CONF_ENV)
    if not conf:
        raise UsageError(f"{backend.describe()} is a RADOS pool: give --ceph-conf FILE or set {CEPH_CONF_ENV}")
    prefix = getattr(backend, "prefix", "")
    return CephDatabases(getattr(backend, "pool", ""), sqlite_namespace(prefix), conf,
                         stub.get("ceph_id") or os.environ.get(CEPH_ID_ENV), guard=backend.check_owner)
