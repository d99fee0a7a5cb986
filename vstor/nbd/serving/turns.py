"""Serving turns: the connections of one NBD server take turns at serving from memory.

Why: each connection has its own thread, and Python's threads share one interpreter lock
(the GIL). A thread gives the GIL up at every system call, a ``preadv`` from the page cache
or a ``sendmsg`` that does not block as much as a wait for the client, and must then wait
for it again behind the other connections' threads. With several connections busy (a client
using multi-conn, ``nbd-client -C 4``, nbdcopy's four connections, fio jobs) every request
paid such hand-overs, each a wake-up of another CPU: in process, warm 4 KiB random reads at a
total queue depth of 16 ran at 29.8-30.9k IOPS on one connection, 17.9-18.8k on two and
16.5-16.7k on four. A connection that holds its turn while it serves a batch from memory
keeps the GIL across those short calls, because the others wait for the turn, not for the
GIL: two connections then served 24.3-25.6k, four 19.3-20.9k (docs/benchmarks.md, section 10).

The rule that keeps one client from stalling another: a connection holds its turn only
while it does work that does not wait: it parses requests it has received, serves reads
the header cache and the page cache hold (``Store.read(nowait=True)``; a lone read too, while
another connection waits for the turn) and sends replies the socket takes at once. It leaves
its turn before anything that may wait: for its client (the next request, room in the socket
for a reply), for the disk or the cluster (a read that missed), or for the journal (writes,
trims, flushes).

Turns are not granted in the order asked for: whichever thread is running takes a free turn.
A strict order (a ticket lock) kept little of the gain (20-21k IOPS on two connections against
26-28k), because every hand-over then waited for the next thread in line to wake up while the
turn sat free. So that a client that queues thousands of requests cannot hold the turn for
long, a connection that has served ``TURN_REQUESTS`` requests in one turn lets a waiting one
go first (:meth:`yield_turn`).
"""

from __future__ import annotations

import threading

__all__ = ["TURN_REQUESTS", "YIELD_WAIT", "ServingTurn"]

TURN_REQUESTS = 64  # requests a connection serves in one turn before a waiting one goes first
YIELD_WAIT = 0.002  # seconds a yielding connection waits for a waiting one to take the turn


class ServingTurn:
    """One server's turn, held by at most one thread at a time.

    :meth:`take` waits for the turn (a no-op for the thread holding it); :meth:`leave` gives
    it up (a no-op for any other thread), so code that may wait can leave without knowing
    whether its caller held the turn; :meth:`yield_turn` lets a waiting thread go first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the turn itself
        self._meta = threading.Condition(threading.Lock())  # waiters, and turns taken after a wait
        self._waiters = 0
        self._owner: int | None = None  # thread ident of the holder
        self.turns = 0  # turns granted (written only by the holder)

    def held(self) -> bool:
        """Whether the calling thread holds the turn."""
        return self._owner == threading.get_ident()

    def waiting(self) -> bool:
        """Whether some thread waits for the turn (a hint: read without a lock)."""
        return self._waiters > 0

    def take(self) -> None:
        me = threading.get_ident()
        if self._owner == me:
            return
        if self._lock.acquire(blocking=False):
            self._owner = me
            self.turns += 1
            return
        with self._meta:
            self._waiters += 1
        self._lock.acquire()
        with self._meta:
            self._waiters -= 1
            self._owner = me
            self.turns += 1
            self._meta.notify_all()  # a yielding thread waits for this

    def leave(self) -> None:
        if self._owner != threading.get_ident():
            return
        self._owner = None
        self._lock.release()

    def yield_turn(self, wait: float = YIELD_WAIT) -> None:
        """If another thread waits for the turn: leave, let it take the turn (waiting up to
        ``wait`` seconds for that), and take it again. Otherwise keep it."""
        if self._owner != threading.get_ident() or not self._waiters:
            return
        granted = self.turns
        self.leave()
        with self._meta:
            self._meta.wait_for(lambda: self.turns != granted, wait)
        self.take()
