"""Writing the journal's space ahead of its tail, while syncs come often.

A new segment file is allocated with ``posix_fallocate`` (the mapped window, writer.py), so
its blocks are *unwritten* extents until data lands in them. The fdatasync that makes a record
durable then also converts them to written extents, which commits the pool filesystem's own
journal: a second device flush per sync. Under small synced writes (a database commit, ext4's
journal on a volume, every fsync of a few KiB) that doubled what a sync cost: 8 KiB write +
sync in process 261-266 us in a fresh segment, 169 us in one whose blocks were written before
(docs/benchmarks.md section 12, "Journal space written ahead of the tail").

So while the journal's syncs are dense -- on average fewer than PREWRITE_BELOW bytes appended
per fdatasync -- a thread of the journal writes zeros ahead of the tail (fallocate first, so
a full filesystem is an ENOSPC there and never a failed writeback later), PREWRITE_STEP at a
time under the appenders' lock, keeping between PREWRITE_LOW and PREWRITE_HIGH prepared
ahead, and waits for each step's writeback outside that lock (so no fdatasync of the
segment waits for more than one step being written). The conversions happen in the
background, and the records that follow are written by pwrite over written blocks (as in a
reused segment file, never through the map: a store into a mapped page over written blocks
dirties its whole folio). Zeros past the tail read as the unwritten space did, so recovery
and scans see the same segment.

The price is a second device write of the bytes prepared: worth it only while syncs are dense
(each sync then saves a filesystem commit, worth far more than writing its few KiB twice);
loads with more than PREWRITE_BELOW between syncs (bulk writes) never start it. A reused
segment file (backend/spares.py) is written already up to its old size: the journal counts
that as prepared, and prepares only past it.

This module holds the policy (pure) and the thread that runs the journal's step; writer.py
does the I/O.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["MIN_SYNCS", "PREWRITE_BELOW", "PREWRITE_HIGH", "PREWRITE_LOW", "PREWRITE_STEP", "WEIGHT", "Prewriter",
           "SyncDensity", "prewrite_range"]

log = logging.getLogger("vstor.journal")

PREWRITE_BELOW = 64 * 1024  # mean bytes appended per fdatasync under which space is prepared ahead
PREWRITE_LOW = 4 * 1024 * 1024  # preparing wakes when less than this lies ahead of the tail ...
PREWRITE_HIGH = 8 * 1024 * 1024  # ... and goes on until this much does
PREWRITE_STEP = 256 * 1024  # zeros written per hold of the appenders' lock, then written back
WEIGHT = 256  # the mean is over about this many syncs (a plain mean until there are as many)
MIN_SYNCS = 64  # fewer syncs than this say nothing yet


class SyncDensity:
    """The mean number of bytes appended per fdatasync, over about the last WEIGHT of them
    (a database between its checkpoints: a burst of page writes between two commits must
    not switch the preparing off and on). Dense once MIN_SYNCS were seen and the mean is
    under ``below``: a pool's first syncs (an admin command's) say nothing about its load."""

    def __init__(self, below: int = PREWRITE_BELOW) -> None:
        self.below = below
        self.mean = 0.0
        self.count = 0
        self._last = 0

    def observe(self, appended_total: int) -> None:
        """One fdatasync ended; ``appended_total`` is the journal's appended_bytes by then."""
        n, self._last = appended_total - self._last, appended_total
        self.count += 1
        self.mean += (n - self.mean) / min(self.count, WEIGHT)

    @property
    def dense(self) -> bool:
        return self.count >= MIN_SYNCS and self.mean < self.below


def prewrite_range(tail: int, prepared: int, segment_size: int, high: int = PREWRITE_HIGH,
                   step: int = PREWRITE_STEP) -> tuple[int, int] | None:
    """The next range to prepare in a segment whose records end at ``tail`` and whose space is
    written up to ``prepared``: at most ``step`` bytes from where preparing stopped (never
    below the tail) towards ``tail + high``; None once that is reached or the segment is full.
    (The journal wakes the preparing when less than PREWRITE_LOW lies ahead.)"""
    start = max(prepared, tail)
    end = min(tail + high, segment_size, start + step)
    return (start, end) if end > start else None


class Prewriter:
    """Runs ``step`` in a thread of its own each time it is poked, until ``step`` returns
    False. The thread starts at the first poke (a journal that never sees dense syncs has
    none) and :meth:`close` stops it. A step that raises is logged and stops the thread for
    good: preparing is only ever a speed-up."""

    def __init__(self, step: Callable[[], bool], name: str = "vstor-prewrite") -> None:
        self._step = step
        self._name = name
        self._wake = threading.Event()
        self._closed = False
        self._broken = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def poke(self) -> None:
        if self._wake.is_set() or self._closed or self._broken:
            return
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._closed:
                    self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._closed:
                return
            self._wake.clear()
            try:
                while not self._closed and self._step():
                    pass
            except Exception:
                log.exception("preparing journal space ahead of the tail failed; it stops (only a speed-up)")
                self._broken = True
                return

    def close(self) -> None:
        with self._start_lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join()
