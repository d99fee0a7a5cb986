"""Removing a deleted segment's storage in the background. Pure (no rados import).

On RADOS a journal segment is striped over objects of 4 MiB: 64 for a 256 MiB segment. The
store deletes dead segments after a checkpoint under its lock, and removing their objects
(parallel batches, each waiting for the OSD) held writers up: the p99 latency of 1 MiB
O_DSYNC writes at queue depth 16 was 56-63 ms with the removals there and 40-43 ms without
them (docs/benchmarks.md §13). So the backend unlists a segment at once, durably, and hands
the removal of its objects to a :class:`Remover`, which runs them on a thread of its own, one
segment after another.

Guarantees the backend relies on:

* after :meth:`Remover.settle` for a segment returns, no removal of it is queued or running,
  so a caller that settles before it looks at or creates a segment (size, read, cut, create)
  never meets a half-removed one;
* :meth:`Remover.close` returns once every removal handed over has ended;
* a removal that fails is logged and counted (``failed``), never raised to whoever deleted the
  segment: the segment is already unlisted, so what is left is space, not data. A crash before
  a removal ends leaves the same: objects of an unlisted segment, which nothing lists or reads
  (segment numbers only grow, so none is used again).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

__all__ = ["Remover"]

log = logging.getLogger("vstor.store")


class Remover:
    def __init__(self, remove: Callable[[int], None], describe: Callable[[int], str]) -> None:
        """``remove(segno)`` removes one segment's objects (OSError when it cannot);
        ``describe(segno)`` names them for the message when it fails."""
        self._remove, self._describe = remove, describe
        self._cond = threading.Condition()
        self._queue: deque[int] = deque()
        self._busy: set[int] = set()  # queued or being removed
        self._thread: threading.Thread | None = None
        self._closed = False
        self.done = self.failed = 0  # removals ended, and those that failed (tests; failures are logged)

    def remove(self, segno: int) -> None:
        """Queue the removal of ``segno``'s objects; returns at once. After :meth:`close`, the
        removal runs in the caller's thread instead."""
        with self._cond:
            if not self._closed:
                self._queue.append(segno)
                self._busy.add(segno)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="vstor-remover", daemon=True)
                    self._thread.start()
                self._cond.notify_all()
                return
        self._one(segno)

    def settle(self, segno: int | None = None) -> None:
        """Wait until no removal of ``segno`` (of any segment when None) is queued or running."""
        if not self._busy:  # the common case: nothing handed over
            return
        with self._cond:
            while (segno in self._busy) if segno is not None else self._busy:
                self._cond.wait()

    def close(self) -> None:
        """Wait for every removal handed over, and stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                segno = self._queue[0]
            self._one(segno)
            with self._cond:
                self._queue.popleft()
                if segno not in self._queue:
                    self._busy.discard(segno)
                self._cond.notify_all()

    def _one(self, segno: int) -> None:
        try:
            self._remove(segno)
            why = ""
        except OSError as e:
            why, bug = str(e), False
        except Exception as e:  # a bug: reported, and the removal still ends, so nobody waits for it forever
            why, bug = f"{e!r}, a bug", True
        if why:
            log.warning("journal segment %d was deleted, but removing its objects failed (%s): %s take "
                        "space until removed by hand", segno, why, self._describe(segno), exc_info=bug)
        with self._cond:
            self.done += 1
            self.failed += bool(why)
