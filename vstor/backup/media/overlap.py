"""sha256 on helper threads, so that a job's hashing overlaps its reading and writing.

A full backup hashes every byte twice, with sha256: each image for the archive's manifest
(tapefile.pax_stream) and each part as stored for the catalog (mediaio.TapeWriter). On the
job's own thread the two passes took about half of a CPU-bound full (4 GiB: ~2.9 s each at
1.4 GB/s with SHA-NI, against a job of 11.6 s; docs/benchmarks.md section 8). hashlib releases
the GIL while it hashes a large buffer, so helper threads can hash one piece while the job
reads the next and writes this one to the drive.

:class:`HashWorker` owns those threads (``THREADS``: the image's and the part's hash each
get one, or the job waits on one thread doing both: 87% of a full's time in py-spy); its
:meth:`~HashWorker.sha256` objects have hashlib's ``update`` and ``hexdigest``. Guarantees:

* the digest is sha256 of the updates in call order, whatever the thread's timing;
* at most ``BATCH`` bytes of one object wait to be sent to a thread, and one batch is in
  flight: ``update`` returns once the batch before has been hashed, so memory stays bounded;
* a buffer given to ``update`` is read after ``update`` returns: a read-only buffer (bytes, or
  a view of bytes) is kept as it is, a writable one is copied first, so a caller reusing its
  buffer cannot change a digest;
* an error of a thread is raised by the ``update`` that sends the next batch, or by
  ``hexdigest``, which never returns a digest of part of the data; closing the
  worker waits for the threads and drops what is still queued.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

__all__ = ["BATCH", "THREADS", "HashWorker", "OverlappedHash"]

BATCH = 4 << 20  # bytes gathered before they go to a thread: one image piece, 16 tape records
THREADS = 2  # one per hash a job keeps at a time (image and part); each hash has one batch in flight


class OverlappedHash:
    """One sha256 fed through a :class:`HashWorker`'s thread (see the module's guarantees)."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool
        self._h = hashlib.sha256()
        self._batch: list[bytes | memoryview] = []
        self._size = 0
        self._last: Future[None] | None = None

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self._batch.append(view if view.readonly else bytes(view))
        self._size += view.nbytes
        if self._size >= BATCH:
            self._send()

    def hexdigest(self) -> str:
        self._send()
        self._wait()
        return self._h.hexdigest()

    def _send(self) -> None:
        self._wait()
        if self._batch:
            self._last = self._pool.submit(_feed, self._h, self._batch)
            self._batch, self._size = [], 0

    def _wait(self) -> None:
        if self._last is not None:
            last, self._last = self._last, None
            last.result()


def _feed(h: hashlib._Hash, batch: list[bytes | memoryview]) -> None:
    for b in batch:
        h.update(b)


class HashWorker:
    """The helper threads of one job's hashes; use it as a context manager."""

    def __init__(self, threads: int = THREADS) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="vstor-hash")

    def sha256(self) -> OverlappedHash:
        return OverlappedHash(self._pool)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> HashWorker:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
