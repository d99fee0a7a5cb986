"""Read workers of one NBD connection: the reads of one receive batch overlap their disk I/O.

The connection's thread hands each queued small READ to :meth:`ReadWorkers.submit` (a
``SimpleQueue`` put: no futures, no per-request locks), serves what else it can, then
:meth:`ReadWorkers.gather` takes every result back, in completion order, before it sends
the batch's replies in one go. So a batch's reads wait for the disk side by side (a read
that misses the page cache costs a 64 KiB frame from disk), while replies still go out
together and from one thread. Errors travel back as values: a read that fails its
checksum is answered EIO, never with data.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from queue import Empty, SimpleQueue
from typing import Any

from vstor.errors import VstorError

__all__ = ["ReadResult", "ReadWorkers"]

ReadResult = tuple[int, int, int, Any, VstorError | None]  # cookie, offset, length, data, error


class ReadWorkers:
    """``workers`` threads calling ``read(offset, length) -> bytes``; started on first use."""

    def __init__(self, read: Callable[[int, int], bytes], workers: int, name: str) -> None:
        self._read, self._n, self._name = read, workers, name
        self._todo: SimpleQueue[tuple[int, int, int] | None] = SimpleQueue()
        self._done: SimpleQueue[ReadResult] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self.pending = 0  # submitted, not yet gathered (the connection's thread only)

    def submit(self, cookie: int, offset: int, length: int) -> None:
        if not self._threads:
            self._threads = [threading.Thread(target=self._work, name=f"{self._name}-r{i}", daemon=True)
                             for i in range(self._n)]
            for t in self._threads:
                t.start()
        self.pending += 1
        self._todo.put((cookie, offset, length))

    def gather(self, idle: Callable[[], object] | None = None) -> Iterator[ReadResult]:
        """Every submitted read's result, as each completes; ``idle()`` is called before
        waiting for one that is not ready (the caller sends the replies it has)."""
        done = self._done
        while self.pending:
            try:
                res = done.get_nowait()
            except Empty:
                if idle is not None:
                    idle()
                res = done.get()
            self.pending -= 1
            yield res

    def close(self) -> None:
        """Wait for the reads still running, then end the threads."""
        for _ in self.gather():
            pass
        for _ in self._threads:
            self._todo.put(None)
        for t in self._threads:
            t.join()
        self._threads = []

    def _work(self) -> None:
        get, put, read = self._todo.get, self._done.put, self._read
        while (item := get()) is not None:
            cookie, offset, length = item
            try:
                put((cookie, offset, length, read(offset, length), None))
            except VstorError as e:
                put((cookie, offset, length, None, e))
            except Exception as e:  # a bug: answered EIO, and the connection goes on
                put((cookie, offset, length, None, VstorError(f"read failed: {type(e).__name__}: {e}")))
