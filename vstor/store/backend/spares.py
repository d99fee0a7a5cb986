"""Dead journal segment files kept for reuse by later segments (local pools).

Why: the journal appends into blocks that ``posix_fallocate`` reserved and nothing wrote
yet, so every fdatasync also converts those extents to written, which commits the
filesystem's own journal. Appending into blocks that hold earlier data needs no such commit:
an 8 KiB Store.write followed by Store.sync took 292-318 us into a fresh segment and 184-203 us
into a reused file whose pages were not cached (docs/benchmarks.md §12). PostgreSQL
recycles its WAL segment files for the same reason.

What makes it safe: a file is kept only when its header says SEG_SEEDED, i.e. every record in
it is of version 2, whose checksum is seeded with the segment number (format.py). Its next
use gets a new, higher number, so the old records left after the new tail fail the new
segment's checksums and are never taken for records of it; the new header says SEG_REUSED,
and a scan ending there is a clean end (segread.py).

Guarantees:

* :meth:`SpareSegments.keep` moves a dead segment file to ``spare/`` (rename, both directories
  synced): as a spare (``NNN.spare``) when it qualifies, otherwise to be removed
  (``NNN.dead``). Either way the segment's name is durably gone on return, as
  ``PoolBackend.delete_segment`` promises, and only metadata was written: the store deletes
  segments under its lock, and freeing a large file's blocks is slow (42 ms for 256 MiB on
  ext4 mounted with ``discard``, which discards them before the truncate returns; every host
  request waits for that lock). :meth:`SpareSegments.purge` then removes the ``.dead`` files
  durably, outside the lock (``PoolBackend.purge_deleted``); one a crash left, or whose
  removal failed (logged, never raised), is removed by the next purge, and nothing lists or
  reads it meanwhile.
* :meth:`SpareSegments.take` makes a spare file segment ``segno``: the new header is written
  over the old one and fdatasynced first, then the file is linked at the segment's name
  (FileExistsError if that exists) and the spare name removed, both directories synced. After
  a crash there is the spare (its header old or new, never listed as a segment), or the new
  segment; if both names survived, the spare name is dropped by the next keep, take or release
  (a spare with more than one link is a segment's file; listing and counting skip it and
  change nothing, so a status query during a take cannot undo the take's own steps).
* :meth:`SpareSegments.release` removes every spare and every ``.dead`` file (the pool is
  short of space).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

from vstor.durable import remove_durably, sync_dir
from vstor.faults import NO_FAULTS, Faults
from vstor.store.journal.format import SEGMENT_HEADER_SIZE, mark_reused, seeded_segment

log = logging.getLogger("vstor.store")

__all__ = ["DEAD_SUFFIX", "MAX_SPARES", "MIN_SPARE_BYTES", "SPARE_SUFFIX", "SpareSegments"]

MAX_SPARES = 2  # files kept; each is one segment's size on the pool's filesystem
MIN_SPARE_BYTES = 1 << 20  # smaller files (a segment cut short) are not worth keeping
FREE_SEGMENTS = 4  # a file is kept only while the filesystem has room for this many more like it
SPARE_SUFFIX = ".spare"
DEAD_SUFFIX = ".dead"  # a deleted segment's file, moved aside to be removed outside the store's lock


class SpareSegments:
    def __init__(self, journal_dir: str, limit: int = MAX_SPARES, faults: Faults = NO_FAULTS) -> None:
        self.dir = os.path.join(journal_dir, "spare")
        self.journal_dir = journal_dir
        self.limit = limit
        self.faults = faults
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Spare files, oldest first; a spare name left linked beside the segment it became (a
        crash inside take, or a take in progress) is not one. Changes nothing."""
        return [n for n, links in self._listing() if links == 1]

    def _listing(self) -> list[tuple[str, int]]:
        try:
            names = sorted(n for n in os.listdir(self.dir) if n.endswith(SPARE_SUFFIX))
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            with contextlib.suppress(FileNotFoundError):
                out.append((n, os.stat(os.path.join(self.dir, n)).st_nlink))
        return out

    def _usable(self) -> list[str]:
        """:meth:`names`, after durably dropping the spare names a crash inside take left beside
        their segments (caller holds ``_lock``, as take does for its link and unlink)."""
        out = []
        for n, links in self._listing():
            if links > 1:
                with contextlib.suppress(FileNotFoundError):
                    remove_durably(os.path.join(self.dir, n))
            else:
                out.append(n)
        return out

    def summary(self) -> tuple[int, int]:
        """(spare files, their bytes), from one listing."""
        names, total = self.names(), 0
        for n in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(self.dir, n)).st_size
        return len(names), total

    def keep(self, path: str, segno: int) -> bool:
        """Move the dead segment file ``path`` to the spares (True), or aside for :meth:`purge`
        to remove (False; nothing to do if it is gone already)."""
        with self._lock:
            kept = self._qualifies(path)
            os.makedirs(self.dir, exist_ok=True)
            try:
                os.rename(path, os.path.join(self.dir, f"{segno:010d}{SPARE_SUFFIX if kept else DEAD_SUFFIX}"))
            except FileNotFoundError:
                return False
            sync_dir(self.dir)
            sync_dir(self.journal_dir)
            self.faults.hit("spares.keep")  # tests: a crash with the file moved aside
            return kept

    def purge(self) -> int:
        """Remove the files :meth:`keep` moved aside, durably; how many were removed. Slow for
        large files (their blocks are freed, and discarded on a filesystem mounted with
        ``discard``): the store calls it without its lock. A file that cannot be removed is
        logged and left for the next purge, never raised: the segment is unlisted already,
        so what is left is space, and neither a checkpoint nor the write that made room
        should fail for it (as a RADOS removal, remover.py)."""
        try:
            names = sorted(n for n in os.listdir(self.dir) if n.endswith(DEAD_SUFFIX))
        except FileNotFoundError:
            return 0
        removed = 0
        for n in names:
            try:
                self.faults.hit("spares.purge")  # tests: a slow removal ("delay"), or a failed one
                remove_durably(os.path.join(self.dir, n))
            except OSError as e:
                log.warning("%s: a deleted journal segment's file was not removed (%s); its space is "
                            "freed by a later checkpoint", os.path.join(self.dir, n), e)
                continue
            removed += 1
        return removed

    def _qualifies(self, path: str) -> bool:
        if self.limit <= 0 or len(self._usable()) >= self.limit:
            return False
        try:
            with open(path, "rb") as f:
                head = f.read(SEGMENT_HEADER_SIZE)
                size = os.fstat(f.fileno()).st_size
            fs = os.statvfs(self.journal_dir)
        except FileNotFoundError:
            return False
        if not seeded_segment(head):
            return False  # older records (version 1) or a damaged header: never reused
        return size >= MIN_SPARE_BYTES and fs.f_bavail * fs.f_frsize >= FREE_SEGMENTS * size

    def take(self, path: str, header: bytes) -> bool:
        """Start a segment at ``path`` in a spare file, with ``header`` marked SEG_REUSED.
        False when there is no spare (the caller creates a new file)."""
        with self._lock:
            names = self._usable()
            if not names:
                return False
            spare = os.path.join(self.dir, names[0])
            fd = os.open(spare, os.O_RDWR)
            try:
                os.pwrite(fd, mark_reused(header), 0)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            self.faults.hit("spares.take")  # tests: a crash with the new header in a spare
            os.link(spare, path)  # FileExistsError if the segment exists: nothing changed
            os.unlink(spare)
            sync_dir(self.journal_dir)
            sync_dir(self.dir)
            return True

    def release(self) -> int:
        """Remove every spare file, and the files moved aside to be removed; returns how many."""
        with self._lock:
            names = self._usable()
            for n in names:
                remove_durably(os.path.join(self.dir, n))
        return len(names) + self.purge()
