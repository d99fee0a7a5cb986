"""The gate in front of the journal's flush: one caller flushes, the others wait for it. Pure.

Group commit needs callers that arrive while a flush runs to wait for that flush and then
either leave (it covered them) or start the next one. A plain mutex around the flush does that
badly under the GIL: the waiters take the mutex one after another, each woken by the one
before, so after every flush the next real flush starts only after a chain of wake-ups of
callers that had nothing left to do (at 16 O_DSYNC writes in flight on a local pool, the
daemon's FUSE threads spent 95% of their time queued on the mutex and the disk flushed only
half the time). Here all waiters are woken at once when a flush ends; those it covered return,
and the first of the others leads the next flush at once.

Guarantee: :meth:`GroupCommit.lead` returns False only when ``covered()`` is true, checked
after the last flush that ended before it returned; True makes the caller the only leader
until it calls :meth:`GroupCommit.done` (always, in a ``finally``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["GroupCommit"]


class GroupCommit:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._busy = False  # a leader is flushing
        self.led = self.joined = 0  # flushes led; callers a flush covered (metrics, tests)
        self.waiting = 0  # callers parked behind the running flush

    def lead(self, covered: Callable[[], bool]) -> bool:
        """Wait while another caller flushes; False when ``covered()`` (nothing left to do),
        True when this caller must flush now and then call :meth:`done`."""
        with self._cond:
            while self._busy and not covered():
                self.waiting += 1
                try:
                    self._cond.wait()
                finally:
                    self.waiting -= 1
            if covered():
                self.joined += 1
                return False
            self._busy = True
            self.led += 1
            return True

    def done(self) -> None:
        """The leader's flush ended (or failed): wake every waiter to look again."""
        with self._cond:
            self._busy = False
            self._cond.notify_all()
