"""One SQLite connection guarded by one lock: the transactions of the backup catalog files.

Guarantee: ``_tx()`` is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` under the object's lock, rolled
back if its body raises; with ``PRAGMA synchronous=FULL`` (set by the owner) a committed
transaction is durable when ``_tx`` returns. A file another process holds gives Busy.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator

from vstor.errors import Busy, UsageError

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
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
