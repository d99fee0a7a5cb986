"""Array counters, exported through DIR/stats and ``vstor array status``."""

from __future__ import annotations

import bisect
import functools
import threading
from collections import Counter, deque
from dataclasses import dataclass, field


@functools.lru_cache(maxsize=256)  # on every request: the few sizes seen are looked up, not formatted
def size_bucket(n: int) -> str:
    """Power-of-two bucket label for request-size histograms: 4096 -> '4K', 5000 -> '8K'."""
    b = 512
    while b < n:
        b <<= 1
    if b < 1 << 10:
        return f"{b}B"
    return f"{b >> 10}K" if b < 1 << 20 else f"{b >> 20}M"


# Requests counted by Counters.request wait in a queue until this many have (or until the
# counters are read), then are added to the totals in one step under the lock.
FOLD_AT = 1024


@dataclass
class Counters:
    """The array's counters. Reads and writes are the hot ones (every request): ``request``
    appends the request's size to a queue (``deque.append``: atomic, no lock) and the totals
    take in what is queued whenever they are read (the properties, ``as_dict``) or FOLD_AT
    requests have waited. Every request is counted exactly once, and a reader of ``reads``
    or ``as_dict`` sees every request counted before it asked. The lock taken per request
    was the largest of the bookkeeping costs that docs/benchmarks.md section 10 ("Per-request
    bookkeeping") measured on 4 KiB reads."""

    _writes: int = 0
    _write_bytes: int = 0
    _reads: int = 0
    _read_bytes: int = 0
    trims: int = 0
    trim_bytes: int = 0
    zero_writes: int = 0
    fsyncs: int = 0
    read_errors: int = 0
    enospc: int = 0
    relocated_bytes: int = 0  # copied forward by maintenance: GC moves and compactions alike
    compacted_bytes: int = 0  # of those, chunk compactions (GC's, the fragment budget's, defragmentation)
    segments_deleted: int = 0
    checkpoints: int = 0
    maintenance_errors: int = 0  # failed maintenance ticks (Reclaimer.run_tick)
    defrag_bytes: int = 0  # bytes rewritten in logical order by defragmentation (defrag.py)
    defrag_windows: int = 0  # windows it rewrote
    defrag_hints: int = 0  # host reads that found their range scattered and named it for rewriting
    defrag_shared_skipped: int = 0  # bytes of scattered windows left alone: a snapshot or clone shares them
    snapshots_taken: int = 0
    _write_sizes: Counter = field(default_factory=Counter)
    # How long each recent snapshot held the store lock (the pause writes to the pool saw), in us.
    snapshot_pauses: deque = field(default_factory=lambda: deque(maxlen=1000))
    _read_sizes: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _read_q: deque = field(default_factory=deque, repr=False)  # sizes of reads not yet in the totals
    _write_q: deque = field(default_factory=deque, repr=False)

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def request(self, kind: str, size: int) -> None:
        """Count one completed read or write request: its bytes and its size bucket."""
        queue = self._write_q if kind == "write" else self._read_q
        queue.append(size)
        if len(queue) >= FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Add the queued requests to the totals."""
        with self.lock:
            self._fold_locked()

    def _fold_locked(self) -> None:
        for queue, kind in ((self._read_q, "read"), (self._write_q, "write")):
            n = len(queue)  # what is queued now; requests queued meanwhile wait for the next fold
            if not n:
                continue
            sizes = [queue.popleft() for _ in range(n)]  # only folders pop, under the lock
            buckets = self._read_sizes if kind == "read" else self._write_sizes
            for size, count in Counter(sizes).items():
                buckets[size_bucket(size)] += count
            if kind == "read":
                self._reads += n
                self._read_bytes += sum(sizes)
            else:
                self._writes += n
                self._write_bytes += sum(sizes)

    def _folded(self, name: str) -> int:
        with self.lock:
            self._fold_locked()
            return int(getattr(self, name))

    @property
    def reads(self) -> int:
        return self._folded("_reads")

    @property
    def read_bytes(self) -> int:
        return self._folded("_read_bytes")

    @property
    def writes(self) -> int:
        return self._folded("_writes")

    @property
    def write_bytes(self) -> int:
        return self._folded("_write_bytes")

    def as_dict(self) -> dict:
        with self.lock:
            self._fold_locked()
            d = {k: v for k, v in self.__dict__.items() if not k.startswith("_") and k != "lock"}
            d.update(writes=self._writes, write_bytes=self._write_bytes, reads=self._reads,
                     read_bytes=self._read_bytes)
            d["write_sizes"] = dict(self._write_sizes)
            d["read_sizes"] = dict(self._read_sizes)
            pauses = sorted(d.pop("snapshot_pauses"))
            d["snapshot_pause_us"] = {
                "count": len(pauses), "p50": pauses[len(pauses) // 2] if pauses else 0,
                "p99": pauses[min(len(pauses) - 1, len(pauses) * 99 // 100)] if pauses else 0,
                "max": pauses[-1] if pauses else 0}
            return d

    def snapshot_taken(self, pause_us: int) -> None:
        with self.lock:
            self.snapshots_taken += 1
            self.snapshot_pauses.append(pause_us)


# Upper bounds (seconds) of the per-volume latency histogram buckets; one more bucket for +Inf.
LATENCY_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class VolumeIO:
    """Per-volume request counters and latency histograms, kept by the FUSE read/write path.

    A volume's row is ``[requests, bytes, seconds, bucket counts...]`` for reads and for writes
    (non-cumulative buckets: the exporter sums them). As in Counters, a request is queued
    without a lock and the rows take the queue in when they are read (:meth:`snapshot`) or
    FOLD_AT requests have waited: every request counted exactly once.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: dict[tuple[int, str], list] = {}
        self._queue: deque[tuple[int, str, int, float]] = deque()

    def record(self, vid: int, kind: str, size: int, seconds: float) -> None:
        queue = self._queue
        queue.append((vid, kind, size, seconds))
        if len(queue) >= FOLD_AT:
            with self.lock:
                self._fold_locked()

    def _fold_locked(self) -> None:
        queue, rows = self._queue, self.rows
        for _ in range(len(queue)):  # only folders pop, under the lock
            vid, kind, size, seconds = queue.popleft()
            row = rows.get((vid, kind))
            if row is None:
                row = rows[(vid, kind)] = [0, 0, 0.0] + [0] * (len(LATENCY_BOUNDS) + 1)
            row[0] += 1
            row[1] += size
            row[2] += seconds
            row[3 + bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1

    def snapshot(self) -> dict[tuple[int, str], list]:
        """A copy of every row, keyed by (volume id, "read" or "write")."""
        with self.lock:
            self._fold_locked()
            return {k: list(v) for k, v in self.rows.items()}
