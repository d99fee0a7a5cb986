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


@dataclass
class Counters:
    writes: int = 0
    write_bytes: int = 0
    reads: int = 0
    read_bytes: int = 0
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
    write_sizes: Counter = field(default_factory=Counter)
    # How long each recent snapshot held the store lock (the pause writes to the pool saw), in us.
    snapshot_pauses: deque = field(default_factory=lambda: deque(maxlen=1000))
    read_sizes: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def request(self, kind: str, size: int) -> None:
        """Count one completed read or write request: its bytes and its size bucket."""
        with self.lock:
            if kind == "write":
                self.writes += 1
                self.write_bytes += size
                self.write_sizes[size_bucket(size)] += 1
            else:
                self.reads += 1
                self.read_bytes += size
                self.read_sizes[size_bucket(size)] += 1

    def as_dict(self) -> dict:
        with self.lock:
            d = {k: v for k, v in self.__dict__.items() if k != "lock"}
            d["write_sizes"] = dict(self.write_sizes)
            d["read_sizes"] = dict(self.read_sizes)
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
