"""The exclusive ownership of a pool on RADOS: a cls_lock exclusive lock with a cookie and
renewals, so that one daemon at a time serves the pool, whichever host it runs on.

The lock is ``LOCK_NAME`` on the object ``LOCK_OBJECT`` in the pool's namespace (PREFIX).
It is taken for ``duration`` seconds, in one write operation with the holder record (xattr
``HOLDER_XATTR``, clslock.py: who holds it, its cookie, its RADOS client and addresses), and
renewed every ``duration / RENEWALS`` seconds by a thread with LOCK_FLAG_MUST_RENEW, so a
renewal never takes a lock that is no longer ours. If the holder dies, the lock expires after
at most ``duration`` and another client may take it. A renewal that fails (someone broke or
took the lock, this client was blocklisted, or the cluster did not answer within the client
timeout) calls ``on_lost``: the owner must stop writing, for good.

Takeover (:meth:`RadosLock.acquire` with ``takeover``): if the lock is held, the holder is
fenced first: its client addresses are blocklisted (``osd blocklist add``, for
:func:`blocklist_seconds`: 7 days unless $VSTOR_RADOS_BLOCKLIST_SECONDS says otherwise), this
client waits for the OSD map that says so (every OSD it talks to then refuses the old
client's operations with ESHUTDOWN), the old lock is broken (``break_lock``) and ours taken.
The caller then opens the pool and replays the journal as after a crash.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from vstor.errors import Busy, VstorError
from vstor.store.backend.rados.clslock import (
    FLAG_MUST_RENEW,
    encode_assert_op,
    encode_break_op,
    encode_lock_op,
    holder_addrs,
    pack_holder,
    unpack_holder,
)

__all__ = ["BLOCKLIST_ENV", "DURATION_ENV", "LOCK_NAME", "LOCK_OBJECT", "LockLost", "RadosLock", "blocklist_seconds",
           "lock_duration"]

LOCK_OBJECT = "owner.lock"
LOCK_NAME = "vstor-owner"
DEFAULT_DURATION = 30  # seconds a lock lives without renewal
DURATION_ENV = "VSTOR_RADOS_LOCK_SECONDS"  # overrides DEFAULT_DURATION (the daemon's lock)
RENEWALS = 3  # renewals per duration
LOCK_FLAG_RENEW = FLAG_MUST_RENEW  # the renewal's flag (LIBRADOS_LOCK_FLAG_MUST_RENEW)
HOLDER_XATTR = "vstor.holder"  # the holder record (clslock.pack_holder), set with the lock
TAKEOVER_ROUNDS = 5  # fence-and-take attempts before giving up (each fences whoever holds it then)
BLOCKLIST_ENV = "VSTOR_RADOS_BLOCKLIST_SECONDS"  # how long a takeover blocklists the old owner's clients
DEFAULT_BLOCKLIST = 7 * 24 * 3600  # longer than any plausible pause of a VM or a process (docs/architecture.md)
BLOCKLIST_RANGE = (60, 10 * 366 * 24 * 3600)


class LockLost(VstorError):
    """The pool's RADOS lock could not be renewed: another daemon may own the pool now."""


def lock_duration() -> int:
    """The lock's duration: $VSTOR_RADOS_LOCK_SECONDS, else DEFAULT_DURATION."""
    raw = os.environ.get(DURATION_ENV, "")
    if not raw:
        return DEFAULT_DURATION
    if not raw.isdigit() or not 2 <= int(raw) <= 3600:
        from vstor.errors import UsageError
        raise UsageError(f"{DURATION_ENV}={raw!r}: give whole seconds from 2 to 3600")
    return int(raw)


def blocklist_seconds() -> int:
    """How long a takeover blocklists the old owner's clients: $VSTOR_RADOS_BLOCKLIST_SECONDS,
    else DEFAULT_BLOCKLIST (the monitor's own default, mon_osd_blocklist_default_expire, is 1 h)."""
    raw = os.environ.get(BLOCKLIST_ENV, "")
    if not raw:
        return DEFAULT_BLOCKLIST
    low, high = BLOCKLIST_RANGE
    if not raw.isdigit() or not low <= int(raw) <= high:
        from vstor.errors import UsageError
        raise UsageError(f"{BLOCKLIST_ENV}={raw!r}: give whole seconds from {low} to {high}")
    return int(raw)


def _code(e: Exception) -> int:
    return abs(getattr(e, "errno", 0) or 0)


class RadosLock:
    def __init__(self, ioctx: Any, what: str = "daemon", duration: int = DEFAULT_DURATION,
                 location: str = "", cluster: Any = None, other_addrs: list[str] | None = None) -> None:
        """``cluster``: the ``rados.Rados`` of ``ioctx``, needed to record the client's
        addresses and to fence another holder (takeover). ``other_addrs``: the addresses of
        the process's other RADOS clients (the backup catalog's libcephsqlite), recorded and
        so fenced with it."""
        import rados
        self._rados = rados
        self.io = ioctx
        self.cluster = cluster
        self.duration = duration
        self.location = location
        self.cookie = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.desc = f"vstor {what} pid {os.getpid()} on {socket.gethostname()}"
        self.other_addrs = list(other_addrs or [])
        self.held = False
        self.lost: str | None = None  # why the lock is no longer ours ("fenced: ..." or "lost ownership: ...")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking and keeping ----------------------------------------------------------------
    def _record(self) -> bytes:
        client_id, addrs = 0, []
        if self.cluster is not None:
            client_id = int(self.cluster.get_instance_id())
            addrs = holder_addrs(str(self.cluster.get_addrs()))
        addrs += [a for a in self.other_addrs if a not in addrs]
        return pack_holder(self.desc, self.cookie, client_id, addrs, socket.gethostname(), os.getpid(), time.time())

    def _take(self) -> None:
        """Lock and holder record in one write operation (both or neither)."""
        rados = self._rados
        record = self._record()
        try:
            with rados.WriteOpCtx() as op:
                op.execute("lock", "lock", encode_lock_op(LOCK_NAME, self.cookie, self.desc, self.duration))
                op.set_xattr(HOLDER_XATTR, record)
                self.io.operate_write_op(op, LOCK_OBJECT)
        except rados.InvalidArgumentError:  # an OSD class that decodes the op otherwise: two steps
            self.io.execute(LOCK_OBJECT, "lock", "lock", encode_lock_op(LOCK_NAME, self.cookie, self.desc,
                                                                        self.duration))
            self.io.set_xattr(LOCK_OBJECT, HOLDER_XATTR, record)

    def acquire(self, takeover: bool = False) -> dict | None:
        """Take the lock; Busy names the holder if another client has it. With ``takeover``,
        fence the holder first (see the module docstring); returns what was fenced (the
        holder record, for the audit log), or None if the lock was free or had expired."""
        try:
            self._take()
        except (self._rados.ObjectBusy, self._rados.ObjectExists):
            if not takeover:
                raise Busy(f"pool {self.location} is owned by {self.holder()}; stop that daemon, or wait up to "
                           f"{self.duration} s for its lock to expire if it died, or start with --takeover to "
                           "fence it (blocklist its RADOS client) and take the pool over") from None
            fenced = self._take_over()
            self.held = True
            return fenced
        except self._rados.Error as e:
            raise VstorError(f"cannot take the lock of pool {self.location}: {e}") from None
        self.held = True
        return None

    def _take_over(self) -> dict:
        if self.cluster is None:
            raise VstorError("a takeover needs the RADOS connection (internal error)")
        fenced: dict | None = None
        for _ in range(TAKEOVER_ROUNDS):
            rec = self.holder_record()
            if rec is None or not rec["addrs"]:
                raise Busy(f"pool {self.location} is held by {self.holder()}, which left no client address to fence "
                           f"it by (an older vstor?); stop it, or wait up to {self.duration} s for its lock to expire")
            self._fence(rec)
            fenced = fenced or rec
            try:
                self._take()
                return fenced
            except (self._rados.ObjectBusy, self._rados.ObjectExists):
                continue  # another host took it in between: fence that one too
            except self._rados.Error as e:
                raise VstorError(f"cannot take the lock of pool {self.location} after fencing its holder: {e}") \
                    from None
        raise Busy(f"pool {self.location}: the lock was taken again after {TAKEOVER_ROUNDS} takeovers; is another "
                   "host taking it over at the same time?")

    def _fence(self, rec: dict) -> None:
        """Blocklist the holder's client, wait for the OSD map that says so, break its lock."""
        rados = self._rados
        mine = set(holder_addrs(str(self.cluster.get_addrs())))
        expire = blocklist_seconds()
        for addr in rec["addrs"]:
            if addr in mine:
                continue
            try:
                self.cluster.blocklist_add(addr, expire)
            except rados.Error as e:
                why = (" (this Ceph user may not blocklist: give it mon 'profile rbd' or "
                       "mon 'allow command \"osd blocklist\"')" if _code(e) in (errno.EACCES, errno.EPERM) else "")
                raise VstorError(f"cannot fence {rec['client']} at {addr}, the holder of pool {self.location}: "
                                 f"{e}{why}") from None
        self.cluster.wait_for_latest_osdmap()
        try:
            self.io.execute(LOCK_OBJECT, "lock", "break_lock",
                            encode_break_op(LOCK_NAME, rec["client_id"], rec["cookie"]))
        except rados.ObjectNotFound:
            pass  # it expired meanwhile, or its holder was another one (the next round fences that)
        except rados.Error as e:
            raise VstorError(f"cannot break the lock of pool {self.location} held by {rec['client']}: {e}") from None

    def renew(self) -> None:
        """Extend the lock by ``duration``; LockLost if it is no longer ours. Not with
        ``Ioctx.lock_exclusive``: python3-rados 16 leaves the microseconds of its duration
        uninitialised, so a lock it renews lives up to 4.3 s longer than asked."""
        try:
            self.io.execute(LOCK_OBJECT, "lock", "lock", encode_lock_op(LOCK_NAME, self.cookie, self.desc,
                                                                        self.duration, LOCK_FLAG_RENEW))
        except self._rados.Error as e:
            self.held = False
            code = _code(e)
            if code == errno.ESHUTDOWN:
                self.lost = ("fenced: this host's RADOS client was blocklisted (another host took the pool "
                             f"{self.location} over)")
            elif code in (errno.EBUSY, errno.EEXIST, errno.ENOENT):
                self.lost = (f"lost ownership of pool {self.location}: its lock expired or was broken "
                             "(another host may serve it now)")
            else:
                self.lost = f"lost ownership of pool {self.location}: the lock could not be renewed ({e})"
            raise LockLost(f"{self.lost}; this daemon writes no more: stop it") from None

    def assert_held(self) -> None:
        """Return only if this client holds the lock now, as the OSD sees it: ``lock.assert_locked``
        with this cookie, from the lock's own client (an expired, broken or taken lock: EBUSY; a
        fenced client: ESHUTDOWN). One round trip, for writes that nothing else fences (the
        backup catalog's commits, backup/sqlitefile.py). LockLost if the lock is not ours (for
        good); OSError with the errno if the cluster did not answer."""
        if self.lost:
            raise LockLost(f"{self.lost}; this daemon writes no more: stop it")
        try:
            self.io.execute(LOCK_OBJECT, "lock", "assert_locked", encode_assert_op(LOCK_NAME, self.cookie))
        except self._rados.Error as e:
            code = _code(e)
            if code == errno.ESHUTDOWN:
                raise LockLost("fenced: this host's RADOS client was blocklisted (another host took the pool "
                               f"{self.location} over); this daemon writes no more: stop it") from None
            if code in (errno.EBUSY, errno.ENOENT):
                raise LockLost(f"lost ownership of pool {self.location}: its lock expired or was broken (another "
                               "host may serve it now); this daemon writes no more: stop it") from None
            raise OSError(code or errno.EIO, f"cannot check the lock of pool {self.location}: {e}") from None

    def holder_record(self) -> dict | None:
        """The holder record of whoever took the lock last, or None."""
        try:
            return unpack_holder(bytes(self.io.get_xattr(LOCK_OBJECT, HOLDER_XATTR)))
        except self._rados.Error:
            return None

    def holder(self) -> str:
        """Who took the lock last, in words."""
        try:
            raw = bytes(self.io.get_xattr(LOCK_OBJECT, HOLDER_XATTR))
        except self._rados.Error:
            return "another vstor daemon"
        rec = unpack_holder(raw)
        if rec is None:
            return raw.decode(errors="replace")
        return f"{rec['desc']} (cookie {rec['cookie']}, RADOS {rec['client']} at {', '.join(rec['addrs']) or '?'})"

    def start_renewal(self, on_lost: Callable[[LockLost], None]) -> None:
        """Renew in a thread every duration / RENEWALS seconds until :meth:`release`. A
        renewal that comes later than ``duration`` after the last good one (the process was
        paused) counts as lost even if RADOS would still renew it."""
        def loop() -> None:
            last = time.monotonic()
            while not self._stop.wait(self.duration / RENEWALS):
                try:
                    if time.monotonic() - last >= self.duration:
                        self.held = False
                        self.lost = (f"lost ownership of pool {self.location}: no renewal for "
                                     f"{time.monotonic() - last:.0f} s (the process was paused?)")
                        raise LockLost(f"{self.lost}; this daemon writes no more: stop it")
                    self.renew()
                    last = time.monotonic()
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
