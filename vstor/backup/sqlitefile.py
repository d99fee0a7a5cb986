"""One SQLite connection guarded by one lock: the transactions of the backup catalog files.

Guarantee: ``_tx()`` is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` under the object's lock, rolled
back if its body raises; with ``PRAGMA synchronous=FULL`` (set by the owner) a committed
transaction is durable when ``_tx`` returns. A file another process holds gives Busy. A
connection with a ``commit_guard`` (catalogdb.GuardedConnection: the daemon's catalog on
RADOS) asks it before committing a transaction that changed rows; if it raises, the
transaction is rolled back (ReadOnly: this daemon no longer owns the pool; Unavailable: the
cluster did not answer).
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
import threading
from collections.abc import Iterator

from vstor.errors import Busy, ReadOnly, Unavailable, UsageError

__all__ = ["SqliteFile"]


class SqliteFile:
    """Base of the classes that own a catalog connection (``path``, ``_lock``, ``_db``)."""

    path: str
    _lock: threading.RLock
    _db: sqlite3.Connection | None

    def close(self) -> None:
        """Close the connection; later calls raise UsageError. Closing twice is harmless."""
        with self._lock:
            db, self._db = self._db, None
            if db is not None:
                db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                raise UsageError(f"the backup catalog {self.path} is closed")
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise Busy(f"the backup catalog {self.path} is locked ({e}): is another vstor daemon "
                           "running on this pool? Stop it and retry") from None
            changes = self._db.total_changes
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            guard = getattr(self._db, "commit_guard", None)  # catalogdb.GuardedConnection
            if guard is not None and self._db.total_changes != changes:
                try:
                    guard()
                except OSError as e:
                    self._db.execute("ROLLBACK")
                    cls = ReadOnly if e.errno == errno.ESHUTDOWN else Unavailable
                    raise cls(f"the backup catalog {self.path}: nothing was committed: {e.strerror or e}") from None
            self._db.execute("COMMIT")
