"""Read-ahead for journal segments kept on a remote backend (RADOS), whose reads each cost a
network round trip and which has no page cache to read ahead for it.

A segment is read in CHUNK-sized, CHUNK-aligned pieces ("chunks", which never cross a RADOS
stripe: CHUNK divides STRIPE_BYTES). The backend passes a ``fetch(segno, index)`` that starts
the read of one chunk without waiting and returns a :class:`Fetch`; :meth:`ReadAhead.read`
serves a request from chunks when

* the request is larger than a chunk (its chunks are then read in parallel, not one after
  the other), or its first chunk is already held, or
* the reads of that segment have been sequential (each within a chunk or two of the last one)
  for SEQUENTIAL_AFTER reads in a row: then the DEPTH chunks past the request are started
  too, so the next requests find their data arrived or on the way;

and otherwise calls the backend's own synchronous read (``direct``): a random 4 KiB read costs
what it did. A chunk that failed or came back short where the request needs more is dropped
and the request is read by ``direct``, which gives the backend's own answer (short at the end
of a segment, FileNotFoundError, or the OSError of the failure).

Memory is bounded: at most BUDGET chunks are held (oldest dropped first, and chunks behind a
sequential reader as it passes them), so BUDGET * CHUNK bytes, plus the chunks that readers
are copying from at that moment.

Coherence: the backend calls :meth:`invalidate` after issuing a write (its aio_write) and
:meth:`drop_segment` when it cuts or deletes a segment. A chunk started after a write was
issued sees it (RADOS orders one client's operations on an object); one started before is
dropped by the write's invalidate, which happens before the write returns, hence before any
map can point at the data. So a read of mapped data never gets a chunk older than that data.
Nothing here checks data: the callers verify every record's checksums on the bytes returned,
exactly as for a direct read, so damage is still reported, never returned.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

__all__ = ["BUDGET", "CHUNK", "DEPTH", "SEQUENTIAL_AFTER", "Fetch", "ReadAhead"]

CHUNK = 1 << 20  # bytes of one read-ahead read; must divide the backend's stripe size
DEPTH = 8  # chunks started past a sequential reader's request
BUDGET = 32  # chunks held at most, whatever the number of readers and segments
SEQUENTIAL_AFTER = 2  # reads near the previous one before read-ahead starts
NEAR = 2  # chunks: a read this close after the last one of its segment continues its stream
STREAMS = 64  # segments whose last read position is remembered


class Fetch(Protocol):
    def result(self) -> bytes | None:
        """Wait for the chunk; its bytes (fewer at the end of the object), or None if it failed."""


class ReadAhead:
    def __init__(self, fetch: Callable[[int, int], Fetch], chunk: int = CHUNK, depth: int = DEPTH,
                 budget: int = BUDGET) -> None:
        if budget < depth + 2:
            raise ValueError("the read-ahead budget must hold a request's chunks and the depth ahead")
        self._fetch, self.chunk, self.depth, self.budget = fetch, chunk, depth, budget
        self._chunks: dict[tuple[int, int], Fetch] = {}  # (segno, index) -> its read; oldest first
        self._streams: dict[int, tuple[int, int]] = {}  # segno -> (last request's last chunk, streak)
        self._lock = threading.Lock()
        self.stats = {"direct": 0, "chunked": 0, "fetched": 0, "fallbacks": 0}

    def read(self, segno: int, pos: int, size: int, direct: Callable[[int, int, int], bytes]) -> bytes:
        """Up to ``size`` bytes of segment ``segno`` from ``pos``, as ``direct(segno, pos, size)``
        would return them."""
        if size <= 0:
            return direct(segno, pos, size)
        c0, c1 = pos // self.chunk, (pos + size - 1) // self.chunk
        with self._lock:
            ahead = self._follow(segno, c0, c1)
            useful = ahead or size > self.chunk or (segno, c0) in self._chunks
            if not useful or c1 - c0 + 1 + (self.depth if ahead else 0) > self.budget:
                self.stats["direct"] += 1
                wanted = None
            else:
                self.stats["chunked"] += 1
                wanted = [self._get(segno, c) for c in range(c0, c1 + 1)]
                if ahead:
                    for c in range(c1 + 1, c1 + 1 + self.depth):
                        self._get(segno, c)
                self._trim(segno, c0)
        if wanted is None:
            return direct(segno, pos, size)
        parts: list[bytes] = []
        for c, f in zip(range(c0, c1 + 1), wanted, strict=True):
            data = f.result()
            base = c * self.chunk
            lo, hi = max(pos - base, 0), min(pos + size - base, self.chunk)
            if data is None or (len(data) < hi and c < c1):  # failed, or short in the middle
                with self._lock:
                    if self._chunks.get((segno, c)) is f:
                        del self._chunks[(segno, c)]
                    self.stats["fallbacks"] += 1
                return direct(segno, pos, size)
            parts.append(data[lo:hi])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def invalidate(self, segno: int, pos: int, size: int) -> None:
        """Forget the chunks that [pos, pos+size) of ``segno`` overlaps (a write was issued there)."""
        if size <= 0 or not self._chunks:
            return
        with self._lock:
            for c in range(pos // self.chunk, (pos + size - 1) // self.chunk + 1):
                self._chunks.pop((segno, c), None)

    def drop_segment(self, segno: int) -> None:
        """Forget every chunk of ``segno`` (it is being cut, created or deleted)."""
        with self._lock:
            for key in [k for k in self._chunks if k[0] == segno]:
                del self._chunks[key]
            self._streams.pop(segno, None)

    def held(self) -> int:
        """Chunks held now (in flight or arrived)."""
        return len(self._chunks)

    # -- under the lock --------------------------------------------------------------------
    def _follow(self, segno: int, c0: int, c1: int) -> bool:
        """Record this request in its segment's stream; whether the stream is sequential."""
        last = self._streams.pop(segno, None)
        streak = last[1] + 1 if last is not None and last[0] - NEAR <= c0 <= last[0] + NEAR else 0
        self._streams[segno] = (c1, streak)  # re-inserted: the dict's order is recency
        if len(self._streams) > STREAMS:
            del self._streams[next(iter(self._streams))]
        return streak >= SEQUENTIAL_AFTER

    def _get(self, segno: int, c: int) -> Fetch:
        f = self._chunks.get((segno, c))
        if f is None:
            f = self._chunks[(segno, c)] = self._fetch(segno, c)
            self.stats["fetched"] += 1
        return f

    def _trim(self, segno: int, c0: int) -> None:
        """Drop this segment's chunks behind the reader, then the oldest over the budget."""
        for c in range(c0 - 1 - self.budget, c0 - 1):
            self._chunks.pop((segno, c), None)
        while len(self._chunks) > self.budget:
            del self._chunks[next(iter(self._chunks))]
