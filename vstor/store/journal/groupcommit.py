"""The gate in front of the journal's flush: one caller flushes, the others wait for it. Pure.

Group commit needs callers that arrive while a flush runs to wait for that flush and then
either leave (it covered them) or start the next one. A plain mutex around the flush does that
badly under the GIL: the waiters take the mutex one after another, each woken by the one
before, so after every flush the next real flush starts only after a chain of wake-ups of
callers that had nothing left to do (at 16 O_DSYNC writes in flight on a local pool, the
daemon's FUSE threads spent 95% of their time queued on the mutex and the disk flushed only
half the time). Here the leader that ends a flush decides for every waiter: those it covered
are released to return, and the first of the others is released as the next leader. A waiter
parks on a lock of its own, so a released waiter takes no shared lock on its way out (with a
condition variable, every waiter woken by ``notify_all`` then queued for the condition's lock
again, one after another: a further wake-up per write at 16 in flight).

Guarantee: :meth:`GroupCommit.lead` returns False only when ``covered()`` is true, checked
after the last flush that ended before it returned; True makes the caller the only leader
until it calls :meth:`GroupCommit.done` (always, in a ``finally``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["GroupCommit"]


class _Parked:
    """A caller waiting behind a flush: blocked on its own lock until a leader releases it."""

    __slots__ = ("covered", "gate", "lead")

    def __init__(self, covered: Callable[[], bool]) -> None:
        self.covered = covered
        self.gate = threading.Lock()
        self.gate.acquire()
        self.lead = False  # set before the release: True makes it the next leader


class GroupCommit:
    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._busy = False  # a leader is flushing
        self._parked: list[_Parked] = []
        self.led = self.joined = 0  # flushes led; callers a flush covered (metrics, tests)

    @property
    def waiting(self) -> int:
        """Callers parked behind the running flush."""
        return len(self._parked)

    def lead(self, covered: Callable[[], bool]) -> bool:
        """Wait while another caller flushes; False when ``covered()`` (nothing left to do),
        True when this caller must flush now and then call :meth:`done`."""
        with self._mutex:
            if covered():
                self.joined += 1
                return False
            if not self._busy:
                self._busy = True
                self.led += 1
                return True
            me = _Parked(covered)
            self._parked.append(me)
        me.gate.acquire()  # released by done(), which decided for this caller
        return me.lead

    def done(self) -> None:
        """The leader's flush ended (or failed): release every waiter it covered, and the first
        of the others as the next leader (the rest wait for that one's flush)."""
        with self._mutex:
            released: list[_Parked] = []
            rest: list[_Parked] = []
            for p in self._parked:
                (released if p.covered() else rest).append(p)
            self.joined += len(released)
            self._busy = bool(rest)
            if rest:  # the first of the others leads the next flush; released first, so it starts first
                rest[0].lead = True
                self.led += 1
                released.insert(0, rest.pop(0))
            self._parked = rest
        for p in released:
            p.gate.release()
