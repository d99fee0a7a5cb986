"""The daemon's watch over an outage of the pool's RADOS cluster: it resumes the store once the
cluster answers again, without a restart (vstor/store/resumeops.py).

Also the daemon's handler of a failed renewal of the pool's RADOS lock: a renewal that timed
out (the cluster did not answer) only *suspends* the journal, as a failed write would: nothing
may be written until the lock is renewed again, which the watch does before it resumes. A
renewal that another client refused (it holds the lock), or any other failure, stops writes
for good: another daemon may own the pool now.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from vstor.errors import VstorError
from vstor.store.journal.outage import UNREACHABLE, classify
from vstor.store.store import Store

__all__ = ["OutageWatch"]

log = logging.getLogger("vstor.daemon")

INTERVAL = 1.0  # seconds between two attempts to resume


def cause_errno(err: BaseException) -> int | None:
    """The errno of the first non-vstor error in ``err``'s chain (a librados error a LockLost
    was raised from), or None."""
    seen: BaseException | None = err
    while seen is not None:
        code = getattr(seen, "errno", None)
        if not isinstance(seen, VstorError) and isinstance(code, int) and code:
            return abs(code)
        seen = seen.__cause__ or seen.__context__
    return None


class OutageWatch:
    def __init__(self, store: Store, renew_lock: Callable[[], None] | None = None,
                 interval: float = INTERVAL) -> None:
        self.store = store
        self.renew_lock = renew_lock  # renews the pool's RADOS lock and restarts its renewals
        self.interval = interval
        self.last_error = ""  # why the last attempt to resume failed
        self._lock_pending = False  # a lock renewal timed out: renew before resuming
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def lock_lost(self, err: Exception) -> None:
        """PoolLock.on_lost: suspend on a renewal that timed out (or that a full pool refused),
        stop writes on any other."""
        if classify(cause_errno(err)) is not None and self.renew_lock is not None:
            self._lock_pending = True
            self.store.journal.suspend(self._probe_kind(), f"the pool's RADOS lock could not be renewed: {err}")
            log.warning("RADOS lock renewal failed; writes suspended until it is renewed: %s", err)
            return
        self.store.journal.stop_writes(str(err))

    def _probe_kind(self) -> str:
        """Whether the cluster is full or does not answer, as a probe write finds it (a renewal
        held back by a full pool times out like one to a stopped OSD)."""
        try:
            self.store.backend.probe()
        except OSError as e:
            return classify(e.errno) or UNREACHABLE
        return UNREACHABLE

    def poll(self) -> dict | None:
        """One attempt: renew the lock if a renewal timed out, then resume the store. Returns the
        resume's report, or None (no outage, or the cluster still fails: ``last_error``)."""
        journal = self.store.journal
        if journal.outage is None or journal.failed:
            return None
        if self._lock_pending and self.renew_lock is not None:
            try:
                self.renew_lock()
            except VstorError as e:  # LockLost
                if classify(cause_errno(e)) is None:  # refused: another client holds it now
                    journal.stop_writes(str(e))
                    log.error("the pool's RADOS lock is lost: %s", e)
                self.last_error = str(e)
                return None
            self._lock_pending = False
        try:
            report = self.store.resume_after_outage()
        except (OSError, VstorError) as e:
            self.last_error = str(e)
            return None
        self.last_error = ""
        return report

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="vstor-outage-watch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # a bug: logged, and the next attempt comes
                log.exception("resuming after an outage failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
