"""The journal's segments as a set: their names, listing and sizes, and the cuts, header
rewrites and deletions that recovery, pool check and GC make. A mixin of Journal
(writer.py), kept apart from the append path. On a remote backend the listing and the sizes
of segments no longer appended to are kept here, so that status and statfs answer while the
cluster does not."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from vstor.store.backend.base import PoolBackend
from vstor.store.journal.format import pack_segment_header, segment_name
from vstor.store.journal.outage import Outage

__all__ = ["SegmentCatalog"]


class SegmentCatalog:
    # Provided by Journal.
    backend: PoolBackend
    pool_uuid: bytes
    outage: Outage | None
    _files: bool
    _segno: int
    _tail: int
    _cache_lock: threading.Lock
    _listed: set[int] | None
    _sizes: dict[int, int]
    _read_fds: dict[int, int]
    _seals: dict[int, int | None]

    sealed_end: Callable[[int], int | None]  # SegmentReader's

    def path(self, segno: int) -> str:
        """The segment's file on a local pool; its name elsewhere (for messages)."""
        return self.backend.local_path(segno) or f"{self.backend.describe()}/journal/{segment_name(segno)}"

    def segments(self) -> list[int]:
        if self._files:
            return self.backend.list_segments()
        # Remote: listed once, then kept by start_segment and delete_segment (only the pool's
        # owner changes the listing), so the status and statfs answer while the cluster does not.
        with self._cache_lock:
            if self._listed is not None:
                return sorted(self._listed)
        listed = self.backend.list_segments()
        with self._cache_lock:
            if self._listed is None:
                self._listed = set(listed)
            return sorted(self._listed)

    def segment_bytes(self, segno: int) -> int:
        if segno == self._segno:
            return self._tail
        if self._files:
            return self.backend.segment_size(segno)
        with self._cache_lock:
            size = self._sizes.get(segno)
        if size is None and self.outage is not None:
            return 0  # not known, and the backend may not answer: the status must not wait for it
        if size is None:  # a segment no longer appended to does not change size
            size = self.backend.segment_size(segno)
            with self._cache_lock:
                self._sizes[segno] = size
        return size

    def truncate_segment(self, segno: int, pos: int) -> None:
        """Cut a torn tail (recovery only)."""
        self.backend.truncate_segment(segno, pos)
        with self._cache_lock:
            self._sizes.pop(segno, None)

    def rewrite_header(self, segno: int) -> None:
        """Write a fresh header over a damaged one (pool check --repair only). It does not say
        SEG_SEEDED: nothing tells which record version the segment holds, so its file is never
        reused for a later segment."""
        self.backend.write_segment(segno, 0, pack_segment_header(self.pool_uuid, segno, 0, seeded=False))
        self.backend.flush_segment(segno)

    def delete_segment(self, segno: int) -> None:
        sealed = self.sealed_end(segno - 1)
        if sealed is not None and self.backend.segment_size(segno - 1) > sealed:
            # Its header is the seal of the segment before: cut that one there first, for good
            # (late writes of the outage are long over), or it would be read whole later.
            self.backend.truncate_segment(segno - 1, sealed)
        fd = self._read_fds.pop(segno, None)
        if fd is not None:
            os.close(fd)
        self.backend.delete_segment(segno)
        with self._cache_lock:
            self._sizes.pop(segno, None)
            if self._listed is not None:
                self._listed.discard(segno)
        self._seals.pop(segno, None)
        self._seals.pop(segno - 1, None)
