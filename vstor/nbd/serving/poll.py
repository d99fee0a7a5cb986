"""Bounded busy-polling for a client's next request, instead of sleeping in ``recv`` at once.

A client at queue depth 1 sends its next request a few microseconds after our reply reaches
it. Sleeping in ``recv`` costs a wake-up each time: on a virtual machine an idle vCPU halts,
and waking it (an interrupt through the hypervisor) took 50-60 us here, more than the
request's own work (docs/benchmarks.md, §10). Polling the socket for a short budget first
(40 us by default; ``recv(MSG_DONTWAIT)`` on plain TCP, readiness over TLS: Wire._poll)
catches the next request on a running CPU: in the NBD benchmark, 4 KiB random writes at
queue depth 1 went from 7.7k to 11.3k IOPS, random reads from 7.9k to 11.3-12.0k.

The price is CPU while it polls, so it is bounded:

* a budget per wait (``budget`` seconds; 0 turns polling off);
* only for a client that sends one request at a time: one with several in flight sends
  more while the thread sleeps, and they are then served in one batch (fewer system calls
  and TLS records: polling cost 5-10% of random IOPS at queue depth 16 over TLS). Over TLS,
  where a receive brings one record, that is told by a record already there (Wire._poll);
* only while every reply is out: a large read still going out from the sender thread, or
  a FLUSH with a durability worker, needs the GIL more than a poll;
* per connection (:class:`RequestPoller`): after ``MISSES`` polls in a row in which nothing
  came (a client that thinks between requests), the next ``REST`` waits sleep at once; then
  it tries again;
* per server (:class:`PollToken`): one connection polls at a time, so many connections never
  spin together for the GIL and both cores.

Pure logic with an injected clock; :class:`vstor.nbd.serving.wire.Wire` does the receiving.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["MAX_POLL_US", "MISSES", "NBD_POLL", "REST", "PollToken", "RequestPoller"]

NBD_POLL = 40e-6  # seconds a connection polls for the next request before it sleeps (0: never)
MAX_POLL_US = 1000  # the most 'vstor array start --nbd-poll-us' accepts
MISSES = 8  # polls in a row that found nothing before the connection rests
REST = 64  # waits that sleep at once after MISSES misses, before polling is tried again


class PollToken:
    """The right to poll, held by one connection of a server at a time; also the server's
    counts of polls that caught a request and polls that did not (changed by the holder)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.caught = self.missed = 0

    def take(self) -> bool:
        """True if this caller may poll now (then it must call :meth:`give_back`)."""
        return self._lock.acquire(blocking=False)

    def give_back(self) -> None:
        self._lock.release()


class RequestPoller:
    """Whether, and until when, one connection polls for its next request. ``budget``:
    seconds per wait (0: never); ``token``: the server's :class:`PollToken`; ``pays``: whether
    polling pays now (one request at a time, every reply sent)."""

    def __init__(self, budget: float, token: PollToken, pays: Callable[[], bool],
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.budget, self.token, self.pays, self.clock = budget, token, pays, clock
        self._missed = 0  # misses in a row
        self._rest = 0  # waits left to sleep through without polling

    def begin(self) -> float | None:
        """The clock time to poll until, or None: sleep in ``recv`` now. A non-None answer
        holds the token until :meth:`end`."""
        if self.budget <= 0:
            return None
        if self._rest:
            self._rest -= 1
            return None
        if not self.pays() or not self.token.take():
            return None
        return self.clock() + self.budget

    def end(self, caught: bool) -> None:
        """The poll that :meth:`begin` started is over: ``caught`` a request, or not."""
        token = self.token
        if caught:
            token.caught += 1
            self._missed = 0
        else:
            token.missed += 1
            self._missed += 1
            if self._missed >= MISSES:
                self._missed, self._rest = 0, REST
        token.give_back()
