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
# counters are read), then are added to the totals in one step under the lock: 0.18 us a
# request, folds included (the request that folds pays 167 us), against 0.61 us a request under
# a lock (timeit; docs/benchmarks.md section 10, "Per-request bookkeeping").
FOLD_AT = 1024


class RequestTally:
    """The reads or the writes of Counters: a queue of request sizes, appended to without a
    lock, and the totals (requests, bytes, requests per size bucket) it is folded into by the
    holder of the counters' lock."""

    __slots__ = ("queue", "count", "bytes", "sizes")

    def __init__(self) -> None:
        self.queue: deque[int] = deque()
        self.count = self.bytes = 0
        self.sizes: Counter[str] = Counter()

    def fold(self) -> RequestTally:
        """Add what is queued now to the totals (the caller holds the lock; requests queued
        meanwhile wait for the next fold: only folders pop)."""
        queue, n = self.queue, len(self.queue)
        if n:
            sizes = [queue.popleft() for _ in range(n)]
            self.count += n
            self.bytes += sum(sizes)
            for size, k in Counter(sizes).items():
                self.sizes[size_bucket(size)] += k
        return self


@dataclass
class Counters:
    """The array's counters. Reads and writes are the hot ones (every request): ``request``
    appends the request's size to a queue (``deque.append``: atomic, no lock) and the totals
    take in what is queued whenever they are read (the properties, ``as_dict``) or FOLD_AT
    requests have waited. Every request is counted exactly once, and a reader of ``reads``
    or ``as_dict`` sees every request counted before it asked. The lock taken per request
    was the largest of the bookkeeping costs that docs/benchmarks.md section 10 ("Per-request
    bookkeeping") measured on 4 KiB reads."""

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
    sweeps: int = 0  # scans of aged images whose scattered records were read ahead (reads/sweep.py)
    sweep_bytes: int = 0  # journal bytes those sweeps read
    snapshots_taken: int = 0
    # How long each recent snapshot held the store lock (the pause writes to the pool saw), in us.
    snapshot_pauses: deque = field(default_factory=lambda: deque(maxlen=1000))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _read: RequestTally = field(default_factory=RequestTally, repr=False)
    _write: RequestTally = field(default_factory=RequestTally, repr=False)

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def request(self, kind: str, size: int) -> None:
        """Count one completed read or write request: its bytes and its size bucket."""
        tally = self._write if kind == "write" else self._read
        queue = tally.queue
        queue.append(size)
        if len(queue) >= FOLD_AT:
            with self.lock:
                tally.fold()

    def _folded(self, kind: str) -> RequestTally:
        with self.lock:
            return (self._write if kind == "write" else self._read).fold()

    @property
    def reads(self) -> int:
        return self._folded("read").count

    @property
    def read_bytes(self) -> int:
        return self._folded("read").bytes

    @property
    def writes(self) -> int:
        return self._folded("write").count

    @property
    def write_bytes(self) -> int:
        return self._folded("write").bytes

    def as_dict(self) -> dict:
        with self.lock:
            d = {k: v for k, v in self.__dict__.items() if not k.startswith("_") and k != "lock"}
            for kind, tally in (("read", self._read.fold()), ("write", self._write.fold())):
                d.update({f"{kind}s": tally.count, f"{kind}_bytes": tally.bytes, f"{kind}_sizes": dict(tally.sizes)})
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

    One lock and one dict lookup per request; a volume's row is ``[requests, bytes, seconds,
    bucket counts...]`` for reads and for writes (non-cumulative buckets: the exporter sums them).
    A queue folded later, as in Counters, cost as much per request here (0.73 us a request to
    fold: the row's work is per request either way), so the lock stays.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: dict[tuple[int, str], list] = {}

    def record(self, vid: int, kind: str, size: int, seconds: float) -> None:
        key = (vid, kind)
        b = bisect.bisect_left(LATENCY_BOUNDS, seconds)
        with self.lock:
            row = self.rows.get(key)
            if row is None:
                row = self.rows[key] = [0, 0, 0.0] + [0] * (len(LATENCY_BOUNDS) + 1)
            row[0] += 1
            row[1] += size
            row[2] += seconds
            row[3 + b] += 1

    def snapshot(self) -> dict[tuple[int, str], list]:
        """A copy of every row, keyed by (volume id, "read" or "write")."""
        with self.lock:
            return {k: list(v) for k, v in self.rows.items()}
