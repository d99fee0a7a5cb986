"""Read-ahead for journal segments kept on a remote backend (RADOS), whose reads each cost a
network round trip and which has no page cache to read ahead for it.

A segment is read in CHUNK-sized, CHUNK-aligned pieces ("chunks", which never cross a RADOS
stripe: CHUNK divides STRIPE_BYTES). The backend passes a ``fetch(segno, index)`` that starts
the read of one chunk without waiting and returns a :class:`Fetch`; :meth:`ReadAhead.read`
serves a request from chunks when

* the request is larger than a chunk (its chunks are then read in parallel, not one after
  the other), or its first chunk is already held, or
* the request continues a sequential stream: a read within NEAR chunks of where an earlier
  read of the same segment ended, SEQUENTIAL_AFTER times in a row (up to STREAMS streams are
  followed at once, several per segment: 16 readers of one volume each have their own). Then
  the chunks past the request are started too, so the next requests find their data arrived
  or on the way: DEPTH of them for one stream, fewer when many streams share the budget;

and otherwise calls the backend's own synchronous read (``direct``): a random 4 KiB read costs
what it did. A chunk that failed or came back short where the request needs more is dropped
and the request is read by ``direct``, which gives the backend's own answer (short at the end
of a segment, FileNotFoundError, or the OSError of the failure).

Memory is bounded: at most BUDGET chunks are held (oldest dropped first, and the chunks a
sequential reader has passed), so BUDGET * CHUNK bytes, plus the chunks that readers are
copying from at that moment.

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

__all__ = ["BUDGET", "CHUNK", "DEPTH", "MAX_STREAMS_AHEAD", "SEQUENTIAL_AFTER", "Fetch", "ReadAhead"]

CHUNK = 1 << 20  # bytes of one read-ahead read; must divide the backend's stripe size
DEPTH = 8  # chunks started past a sequential reader's request
BUDGET = 32  # chunks held at most, whatever the number of readers and segments
SEQUENTIAL_AFTER = 2  # reads near the previous one before read-ahead starts
NEAR = 2  # chunks: a read this close to where a stream's last read ended continues it
STREAMS = 16  # streams followed at once (the most recent)
MAX_STREAMS_AHEAD = 4  # more active streams than this: no read-ahead (the reads are parallel already)


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
        self._streams: list[list[int]] = []  # [segno, last request's last chunk, streak]; most recent last
        self._lock = threading.Lock()
        self.stats = {"direct": 0, "chunked": 0, "fetched": 0, "fallbacks": 0}

    def read(self, segno: int, pos: int, size: int, direct: Callable[[int, int, int], bytes]) -> bytes:
        """Up to ``size`` bytes of segment ``segno`` from ``pos``, as ``direct(segno, pos, size)``
        would return them."""
        if size <= 0:
            return direct(segno, pos, size)
        c0, c1 = pos // self.chunk, (pos + size - 1) // self.chunk
        with self._lock:
            ahead = self._depth() if self._follow(segno, c0, c1) else 0
            useful = ahead or size > self.chunk or (segno, c0) in self._chunks
            if not useful or c1 - c0 + 1 + ahead > self.budget:
                self.stats["direct"] += 1
                wanted = None
            else:
                self.stats["chunked"] += 1
                wanted = [self._get(segno, c) for c in range(c0, c1 + 1)]
                for c in range(c1 + 1, c1 + 1 + ahead):
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
        if size <= 0:
            return
        with self._lock:  # always: a reader may be between its aio_read and holding the chunk
            for c in range(pos // self.chunk, (pos + size - 1) // self.chunk + 1):
                self._chunks.pop((segno, c), None)

    def drop_segment(self, segno: int) -> None:
        """Forget every chunk of ``segno`` (it is being cut, created or deleted)."""
        with self._lock:
            for key in [k for k in self._chunks if k[0] == segno]:
                del self._chunks[key]
            self._streams = [s for s in self._streams if s[0] != segno]

    def drain(self) -> None:
        """Wait for every chunk held and forget them all (before the connection closes)."""
        with self._lock:
            held, self._chunks = list(self._chunks.values()), {}
            self._streams = []
        for f in held:
            f.result()

    def held(self) -> int:
        """Chunks held now (in flight or arrived)."""
        return len(self._chunks)

    # -- under the lock --------------------------------------------------------------------
    def _follow(self, segno: int, c0: int, c1: int) -> bool:
        """Record this request in the stream it continues (or a new one); whether that stream
        is sequential."""
        for i, s in enumerate(self._streams):
            if s[0] == segno and s[1] - NEAR <= c0 <= s[1] + NEAR:
                del self._streams[i]
                s[1], s[2] = c1, s[2] + 1
                break
        else:
            s = [segno, c1, 0]
            if len(self._streams) >= STREAMS:
                del self._streams[0]
        self._streams.append(s)  # most recent last
        return s[2] >= SEQUENTIAL_AFTER

    def _depth(self) -> int:
        """Chunks to start past a sequential request: DEPTH for one stream; with more, half the
        budget shared between them (at least one each); none when more than MAX_STREAMS_AHEAD
        streams are active (16 parallel readers ran at 0.35 of their speed without read-ahead:
        each 1 MiB request then fetched 3 MiB, docs/benchmarks.md §13)."""
        active = sum(1 for s in self._streams if s[2] >= SEQUENTIAL_AFTER)
        if active > MAX_STREAMS_AHEAD:
            return 0
        return max(1, min(self.depth, self.budget // 2 // max(1, active)))

    def _get(self, segno: int, c: int) -> Fetch:
        f = self._chunks.get((segno, c))
        if f is None:
            f = self._chunks[(segno, c)] = self._fetch(segno, c)
            self.stats["fetched"] += 1
        return f

    def _trim(self, segno: int, c0: int) -> None:
        """Drop the chunks this reader has just passed, then the oldest over the budget."""
        for c in (c0 - 3, c0 - 2):
            self._chunks.pop((segno, c), None)
        while len(self._chunks) > self.budget:
            del self._chunks[next(iter(self._chunks))]
