"""The Store's sweeps: a background thread that reads an aged volume's records ahead of a scan.

A mixin of Store, a base of the read path (path.py), which calls :meth:`_scan_read` for each
read of many pieces; what a sweep reads and why is in sweep.py. The thread plans the rest of
the scanned image window by window (the store lock held for one map lookup at a time), then
reads the planned spans into the page cache 1 MiB at a time (asking the kernel for the 8 MiB
ahead with each, and waiting for each by reading its last page), each counted as a read in
flight so that segment deletion waits for it; a segment deleted since the plan is missing,
and its run skipped. It verifies nothing and returns nothing: the scan's own reads verify
every byte they return.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from vstor.errors import CorruptData, VstorError
from vstor.store.journal.format import RECORD_HEADER_SIZE, loc_pos, loc_segno
from vstor.store.maps.chunkmap import VolumeMap
from vstor.store.reads.sweep import SPAN, SWEEP_MAX, WINDOW, ScanDetector, SweepPlan
from vstor.store.storeparts import StoreParts

__all__ = ["SCAN_READ", "SMALL_PIECE", "SweepMixin", "memory_available"]

log = logging.getLogger("vstor.store")

SMALL_PIECE = 64 << 10  # pieces up to this size count as small records (path.py asks for them at once)
SCAN_READ = 256 << 10  # reads at least this large, of many pieces, make a scan
AHEAD = 8 << 20  # a sweep asks for this much past its read, so that the disk has several reads in flight


def memory_available(meminfo: str = "/proc/meminfo") -> int:
    """The kernel's estimate of memory available without swapping (``MemAvailable``), in bytes;
    0 when it cannot be read (then nothing is swept)."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) << 10
    except (OSError, ValueError, IndexError):
        pass
    return 0


class SweepMixin(StoreParts):
    _scans: ScanDetector
    _sweeping: threading.Thread | None
    _sweeps_stop: threading.Event
    memory_available: Callable[[], int] = staticmethod(memory_available)  # tests replace it

    if TYPE_CHECKING:  # provided by the read path (path.py)
        def _image(self, vid: int, sid: int) -> tuple[VolumeMap, int]: ...

    def _scan_read(self, vid: int, sid: int, offset: int, size: int) -> int:
        """With the store lock held: a read of many pieces of [offset, offset+size) of an image.
        START when it makes the reader a scan that should be swept now, COVERED when a sweep
        covers the reader's scan, else 0 (ScanDetector)."""
        if size < SCAN_READ or not self.journal.local_files:
            return 0
        return self._scans.note(vid, sid, offset, size, self.clock.monotonic())

    def _still_warm(self, vid: int, sid: int, pieces: list) -> bool:
        """For a read of a covered scan: whether the page cache still holds the small record
        of ``pieces`` furthest in the journal (one read without waiting of its header), as
        it does once the sweep has passed it. When it does not and no sweep is running any
        more, the pages the sweep read are gone (evicted, or dropped): the image's coverage
        ends, so that the stream's next read starts another sweep. Takes the store lock."""
        small = [loc for s, e, loc in pieces if e - s <= SMALL_PIECE]
        if not small:
            return True
        loc = max(small)
        probe = memoryview(bytearray(RECORD_HEADER_SIZE))
        if self.journal.pread_cached(loc_segno(loc), loc_pos(loc), probe):
            return True
        with self._lock:
            if not self._sweep_running():
                self._scans.forget(vid, sid)
        return False

    def sweep(self, vid: int, offset: int, sid: int = 0) -> bool:
        """Start reading ahead, in the background, the journal spans that the rest of volume
        ``vid`` (of its image in snapshot ``sid``) from ``offset`` on is read from (sweep.py).
        False, starting nothing, on a remote pool, while another sweep runs or once the store
        is closing."""
        if not self.journal.local_files:
            return False
        with self._lock:
            if self._sweeps_stop.is_set() or self._sweep_running():
                return False
            th = threading.Thread(target=self._sweep, args=(vid, sid, offset), name=f"vstor-sweep-{vid}",
                                  daemon=True)
            self._sweeping = th
            self._scans.started(vid, sid, offset, self.clock.monotonic())
        th.start()
        return True

    def _sweep_running(self) -> bool:
        """With the store lock held: whether a sweep's thread is running."""
        return self._sweeping is not None and self._sweeping.is_alive()

    def stop_sweeps(self) -> None:
        """Stop the sweep in progress, if any, and wait for its thread; start no other."""
        self._sweeps_stop.set()
        th = self._sweeping
        if th is not None and th is not threading.current_thread():
            th.join()

    def _sweep(self, vid: int, sid: int, offset: int) -> None:
        t0 = self.clock.monotonic()
        try:
            plan = self._sweep_plan(vid, sid, offset)
            if plan is None:
                return
            budget = min(SWEEP_MAX, self.memory_available() // 4)
            runs = plan.runs(budget)
            self.stats.add(sweeps=1)
            if runs and not plan.cut:  # the scan's reads may stop asking for their records one by one
                with self._lock:
                    self._scans.covered(vid, sid)
            read = self._sweep_runs(runs)
        except Exception as e:
            with self._lock:  # the reads ask for their records again
                self._scans.covered(vid, sid, False)
            if isinstance(e, OSError | VstorError):  # only a hint: the scan's reads report what is wrong
                log.debug("sweep of volume %d ended: %s", vid, e)
            else:  # a defect: say so, but a hint must never take a read with it
                log.exception("sweep of volume %d failed", vid)
            return
        log.info("sweep of volume %d%s from offset %d: %d MiB of the journal read ahead in %.1f s (the rest of "
                 "the scan reads %d MiB from it)", vid, f" snapshot {sid}" if sid else "", offset, read >> 20,
                 self.clock.monotonic() - t0, plan.needed >> 20)

    def _sweep_plan(self, vid: int, sid: int, offset: int) -> SweepPlan | None:
        """The plan of [offset, end) of the image, looked up WINDOW bytes at a time; None when
        the store is closing, NotFound when the image is gone."""
        plan = SweepPlan(SMALL_PIECE)
        at = offset
        while not self._sweeps_stop.is_set():
            with self._lock:
                vm, size = self._image(vid, sid)
                if at >= size:
                    return plan
                pieces = vm.lookup(at, min(size, at + WINDOW))
            plan.add(pieces)
            at += WINDOW
        return None

    def _sweep_runs(self, runs: list[tuple[int, int, int]]) -> int:
        """Read the runs into the page cache 1 MiB at a time: the kernel asked (WILLNEED) for
        the AHEAD bytes after each so that the disk has several reads in flight, and each
        waited for (``Journal.settle``: its last page read, not the MiB copied). The bytes
        read."""
        steps = [(k, segno, at) for k, (segno, pos, length) in enumerate(runs)  # runs are whole spans
                 for at in range(pos, pos + length, SPAN)]
        read, asked, ended = 0, 0, -1  # bytes read, steps asked for, the run whose segment ended
        try:
            for i, (k, segno, at) in enumerate(steps):
                if self._sweeps_stop.is_set():
                    return read
                if k == ended:
                    continue
                self.faults.hit("sweep.read")
                with self._lock:
                    self._active_reads += 1  # segment deletion waits for this read and these hints
                try:
                    asked = self._sweep_ask(steps, max(asked, i), i + AHEAD // SPAN)
                    got = self.journal.settle(segno, at, SPAN)
                except CorruptData:  # "journal segment N is missing": deleted since the plan
                    got = 0
                finally:
                    self.done_reading()
                read += got
                if got < SPAN:
                    ended = k  # the segment ends here, or is gone: on to the next run
        finally:
            self.stats.add(sweep_bytes=read)
        return read

    def _sweep_ask(self, steps: list[tuple[int, int, int]], i: int, until: int) -> int:
        """Ask the kernel for steps [i, until) (a hint: a failure is ignored, the read finds
        it); returns the first step not asked for. Counted as a read in flight by the caller."""
        until = min(until, len(steps))
        for _k, segno, at in steps[i:until]:
            try:
                self.journal.prefetch(segno, at, SPAN)
            except (OSError, VstorError):
                pass
        return max(i, until)
