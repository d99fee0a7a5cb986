"""The exclusive ownership of a pool on RADOS: a cls_lock exclusive lock with a cookie and
renewals, so that one daemon at a time serves the pool, whichever host it runs on.

The lock is ``LOCK_NAME`` on the object ``LOCK_OBJECT`` in the pool's namespace (PREFIX).
It is taken for ``duration`` seconds and renewed (``LIBRADOS_LOCK_FLAG_RENEW``) every
``duration / RENEWALS`` seconds by a thread; if the holder dies, the lock expires after at
most ``duration`` and another client may take it. A renewal that fails (the lock expired and
someone else took it, or the cluster did not answer within the client timeout) calls
``on_lost``: the owner must stop writing. Fencing a live old owner (blocklisting its client)
is not done here yet (issue 29).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

from vstor.errors import Busy, VstorError

__all__ = ["LOCK_NAME", "LOCK_OBJECT", "LockLost", "RadosLock"]

LOCK_OBJECT = "owner.lock"
LOCK_NAME = "vstor-owner"
DEFAULT_DURATION = 30  # seconds a lock lives without renewal
RENEWALS = 3  # renewals per duration
LOCK_FLAG_RENEW = 1  # LIBRADOS_LOCK_FLAG_RENEW
HOLDER_XATTR = "vstor.holder"  # the holder's description, written by it after it takes the lock


class LockLost(VstorError):
    """The pool's RADOS lock could not be renewed: another daemon may own the pool now."""


class RadosLock:
    def __init__(self, ioctx: Any, what: str = "daemon", duration: int = DEFAULT_DURATION,
                 location: str = "") -> None:
        import rados
        self._rados = rados
        self.io = ioctx
        self.duration = duration
        self.location = location
        self.cookie = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.desc = f"vstor {what} pid {os.getpid()} on {socket.gethostname()}"
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _lock(self, flags: int) -> None:
        self.io.lock_exclusive(LOCK_OBJECT, LOCK_NAME, self.cookie, desc=self.desc, duration=self.duration,
                               flags=flags)

    def acquire(self) -> None:
        """Take the lock; Busy names the holder if another client has it."""
        try:
            self._lock(0)
        except (self._rados.ObjectBusy, self._rados.ObjectExists):
            raise Busy(f"pool {self.location} is owned by {self.holder()}; stop that daemon, or wait up to "
                       f"{self.duration} s for its lock to expire if it died") from None
        except self._rados.Error as e:
            raise VstorError(f"cannot take the lock of pool {self.location}: {e}") from None
        self.held = True
        try:  # who holds it, for the refusal of the next one (python-rados cannot list lockers)
            self.io.set_xattr(LOCK_OBJECT, HOLDER_XATTR, f"{self.desc} (cookie {self.cookie})".encode())
        except self._rados.Error:
            pass

    def renew(self) -> None:
        """Extend the lock by ``duration``; LockLost if it is no longer ours."""
        try:
            self._lock(LOCK_FLAG_RENEW)
        except self._rados.Error as e:
            self.held = False
            code = abs(getattr(e, "errno", 0) or 0)
            why = "another client took it" if code in (errno.EBUSY, errno.EEXIST) else str(e)
            raise LockLost(f"lost the lock of pool {self.location} ({why}); stop writing and restart") from None

    def holder(self) -> str:
        """Who took the lock last, as it wrote in the lock object's HOLDER_XATTR."""
        try:
            return bytes(self.io.get_xattr(LOCK_OBJECT, HOLDER_XATTR)).decode(errors="replace")
        except self._rados.Error:
            return "another vstor daemon"

    def start_renewal(self, on_lost: Callable[[LockLost], None]) -> None:
        """Renew in a thread every duration / RENEWALS seconds until :meth:`release`."""
        def loop() -> None:
            while not self._stop.wait(self.duration / RENEWALS):
                try:
                    self.renew()
                except LockLost as e:
                    on_lost(e)
                    return

        self._thread = threading.Thread(target=loop, name="rados-lock-renewal", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.held:
            self.held = False
            try:
                self.io.unlock(LOCK_OBJECT, LOCK_NAME, self.cookie)
            except self._rados.Error:
                pass  # expired or broken: it is not ours any more either way

    def __enter__(self) -> RadosLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
