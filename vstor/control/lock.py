"""The exclusive pool lock: one daemon (or one offline admin command) per pool.

flock on POOL/lock; the holder writes its pid there so a refusal can name it. The lock
dies with its process, so kill -9 never leaves a pool locked.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from vstor.errors import Busy
from vstor.store.superblock import layout

if TYPE_CHECKING:
    from vstor.store.backend.base import PoolBackend
    from vstor.store.backend.radoslock import RadosLock


class PoolLock:
    """The flock of the pool directory; for a pool on RADOS also its RADOS lock
    (vstor/store/backend/radoslock.py), renewed while held, so that no other host serves it."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self.path = layout(pool)["lock"]
        self.fd = -1
        self.rados: RadosLock | None = None
        self._backend: PoolBackend | None = None  # the connection the RADOS lock is held on
        self.on_lost: list[Callable[[Exception], None]] = []  # called when a RADOS lock renewal fails

    def acquire(self, what: str = "daemon") -> None:
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
            self._acquire_rados(what)
        except BaseException:
            self.release()
            raise

    def _acquire_rados(self, what: str) -> None:
        from vstor.store.backend.stub import backend_for, read_stub
        stub = read_stub(self.pool)
        if stub is None:
            return
        from vstor.store.backend.radosbe import RadosBackend
        from vstor.store.backend.radoslock import RadosLock
        backend = backend_for(self.pool)
        if not isinstance(backend, RadosBackend):  # a stub always names a rados:// location
            backend.close()
            return
        lock = RadosLock(backend.meta, what, location=stub["location"])
        try:
            lock.acquire()
        except BaseException:
            backend.close()
            raise
        self._backend, self.rados = backend, lock
        lock.start_renewal(self._lost)

    def _lost(self, err: Exception) -> None:
        for fn in self.on_lost:
            fn(err)

    def renew_rados(self) -> None:
        """Renew the RADOS lock now and restart its renewals, after a renewal failed because the
        cluster did not answer (vstor/control/outagewatch.py). LockLost if it cannot be renewed."""
        if self.rados is not None:
            self.rados.renew()
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
