"""The exclusive pool lock: one daemon (or one offline admin command) per pool.

flock on POOL/lock; the holder writes its pid there so a refusal can name it. The lock
dies with its process, so kill -9 never leaves a pool locked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from vstor.errors import Busy, VstorError
from vstor.store.superblock import layout

if TYPE_CHECKING:
    from vstor.faults import Faults
    from vstor.store.backend.base import PoolBackend
    from vstor.store.backend.rados.backend import RadosBackend
    from vstor.store.backend.rados.lock import RadosLock


class PoolLock:
    """The flock of the pool directory; for a pool on RADOS also its RADOS lock
    (vstor/store/backend/rados/lock.py), renewed while held, so that no other host serves it."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self.path = layout(pool)["lock"]
        self.fd = -1
        self.rados: RadosLock | None = None
        self._backend: RadosBackend | None = None  # the connection the RADOS lock is held on
        self.on_lost: list[Callable[[Exception], None]] = []  # called once: renewal failed, or fenced
        self.fenced: dict | None = None  # the holder record of the owner a takeover fenced
        self._lost_once = threading.Lock()
        self._lost_error: Exception | None = None  # the last loss not yet made good by a renewal
        self._lost_final = False  # the last loss is for good

    def acquire(self, what: str = "daemon", takeover: bool = False) -> None:
        """Take the pool; ``takeover`` (a RADOS pool): fence a live owner on another host first."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise Busy(f"pool {self.pool} is in use by {self.holder()}; "
                       f"stop it with 'vstor array stop --pool {self.pool}'") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
        self.fd = fd
        try:
            self._acquire_rados(what, takeover)
        except BaseException:
            self.release()
            raise

    def _acquire_rados(self, what: str, takeover: bool) -> None:
        from vstor.store.backend.stub import backend_for, read_stub
        stub = read_stub(self.pool)
        if stub is None:
            return
        from vstor.store.backend.rados.backend import RadosBackend
        from vstor.store.backend.rados.lock import RadosLock, lock_duration
        backend = backend_for(self.pool)
        if not isinstance(backend, RadosBackend):  # a stub always names a rados:// location
            backend.close()
            return
        try:
            lock = RadosLock(backend.meta, what, lock_duration(), location=stub["location"], cluster=backend.cluster,
                             other_addrs=self._catalog_addrs(backend))
            self.fenced = lock.acquire(takeover=takeover)
        except BaseException:
            backend.close()
            raise
        self._backend, self.rados = backend, lock
        lock.start_renewal(self._lost)

    def _catalog_addrs(self, backend: RadosBackend) -> list[str]:
        """The address of the backup catalog's RADOS client (libcephsqlite, loaded now for this
        pool's cluster), so that a takeover fences it with the lock's; [] if it cannot load
        (no catalog on RADOS can be open then either)."""
        from vstor.backup.catalogdb import catalog_databases, vfs_client
        from vstor.store.backend.rados.clslock import holder_addrs
        try:
            catalog_databases(self.pool, backend)
        except VstorError:
            return []
        client = vfs_client()
        return holder_addrs(str(client.get("addr", ""))) if client else []

    def _lost(self, err: Exception) -> None:
        """Tell the listeners. A loss for good (fenced, refused, expired) is told once and ends
        every later report; one the cluster may recover from (a renewal timed out, or a full pool
        held it back: vstor/control/outagewatch.py) is told each time it happens."""
        from vstor.control.outagewatch import cause_errno
        from vstor.store.journal.outage import classify
        final = classify(cause_errno(err)) is None
        with self._lost_once:
            if self._lost_final:
                return
            self._lost_error, self._lost_final = err, final
            listeners = list(self.on_lost)
        for fn in listeners:
            fn(err)

    def when_lost(self, fn: Callable[[Exception], None]) -> None:
        """Call ``fn`` when the RADOS lock is lost or this client fenced (see :meth:`_lost`); at
        once if it already was (e.g. during the store's recovery)."""
        with self._lost_once:
            self.on_lost.append(fn)
            err = self._lost_error
        if err is not None:
            fn(err)

    def store_backend(self, faults: Faults) -> PoolBackend | None:
        """For a RADOS pool, the backend the store must use: on the lock's RADOS client (so
        fencing that client fences the store). A blocklist error from it counts as losing the
        pool (:meth:`_lost`), and losing the lock makes it refuse every write. None for a
        local pool."""
        if self._backend is None or self.rados is None:
            return None
        from vstor.store.backend.rados.fenced import FencedBackend
        rlock = self.rados

        def fenced(err: OSError) -> None:
            rlock.held = False  # not ours any more: no unlock at release
            rlock.lost = rlock.lost or err.strerror
            self._lost(VstorError(f"{rlock.lost}; this daemon writes no more: stop it"))

        be = self._backend
        store_be = FencedBackend(be.cluster, be.pool, be.prefix, fenced, faults, owner_check=rlock.assert_held)
        def fence_for_good(e: Exception) -> None:  # not on a timeout: that resumes
            if self._lost_final:
                store_be.fence(str(e))

        self.when_lost(fence_for_good)
        return store_be

    def renew_rados(self) -> None:
        """Renew the RADOS lock now and restart its renewals, after a renewal failed because the
        cluster did not answer (vstor/control/outagewatch.py). LockLost if it cannot be renewed."""
        if self.rados is not None:
            try:
                self.rados.renew()
            except VstorError as e:  # LockLost
                from vstor.control.outagewatch import cause_errno
                from vstor.store.journal.outage import classify
                if classify(cause_errno(e)) is None:  # refused: lost for good (the store's backend latches)
                    self._lost(e)
                raise
            with self._lost_once:
                self._lost_error = None
            self.rados.held = True
            self.rados.start_renewal(self._lost)

    def holder(self) -> str:
        try:
            with open(self.path) as f:
                pid, _, what = f.read().strip().partition(" ")
            return f"vstor {what or 'process'} pid {pid}"
        except OSError:
            return "another vstor process"

    def release(self) -> None:
        if self.rados is not None:
            self.rados.release()
            self.rados = None
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PoolLock:
        self.acquire("admin command")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def daemon_pid(pool: str) -> int | None:
    """The pid of the process holding the pool lock, or None if nobody holds it."""
    path = layout(pool)["lock"]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            data = os.pread(fd, 64, 0).decode(errors="replace").split()
            return int(data[0]) if data and data[0].isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
