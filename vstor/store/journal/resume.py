"""The journal's side of an outage of a remote backend: suspend, and resume in a new segment
that seals the old one. A mixin of Journal (writer.py), kept apart so that the append path
stays readable; the rules (which errnos suspend, what the host gets) are in outage.py, and
why a sealed segment is safe against late writes in docs/architecture.md, "Faults on RADOS".
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from vstor.errors import VstorError
from vstor.store.backend.base import PoolBackend
from vstor.store.journal.format import (
    SEGMENT_HEADER_SIZE,
    pack_segment_header,
    segment_seal,
    unpack_segment_header,
)
from vstor.store.journal.outage import Outage, classify

__all__ = ["ResumeMixin"]


class ResumeMixin:
    # Provided by Journal.
    backend: PoolBackend
    failed: str | None
    outage: Outage | None
    pool_uuid: bytes
    _resume_header: bytes | None
    _resume_tail: int | None
    _seals: dict[int, int | None]
    _cache_lock: threading.Lock
    _sizes: dict[int, int]
    _sync_lock: threading.Lock
    _lock: Any
    _segno: int
    _tail: int
    _durable: tuple[int, int]
    _begin: Callable[[int], None]
    _now_ns: Callable[[], int]
    _fail: Callable[[str], None]
    _check_failed: Callable[[], None]

    def _suspend(self, err: OSError, why: str) -> None:
        """Suspend on a failure that says the remote backend is unreachable or full (raises the
        error the caller's host request gets); return for any other, which fails the journal."""
        kind = classify(err.errno)
        if kind is None or self.failed:
            return
        self.suspend(kind, why)
        self._check_failed()

    def suspend(self, kind: str, why: str) -> None:
        """Refuse appends and syncs until :meth:`resume` (also called when the pool's RADOS lock
        could not be renewed in time: nothing may be written until it is again)."""
        if self.outage is None:
            self.outage = Outage.of(kind, why)

    def cut_to_durable(self) -> int:
        """First step of a resume: wait for the writes still in flight (each ends within the
        client timeout), forget them and their failures, and move the tail back to the last
        durable position, so that a scan of the live segment (the caller's rebuild of its state)
        stops there. Returns how many bytes were dropped. Appends stay refused until
        :meth:`resume`; the caller holds the store lock and has checked the backend answers."""
        self._check_failed_only()
        with self._sync_lock, self._lock:
            dseg, dpos = self._durable
            end = dpos if dseg == self._segno else SEGMENT_HEADER_SIZE
            first = self._resume_tail if self._resume_tail is not None else self._tail
            self._resume_tail = first
            self.backend.abandon_segment(self._segno)
            self._tail = end
            return first - end

    def resume(self) -> int:
        """Last step of a resume, after :meth:`cut_to_durable`: append from now on to a new
        segment created with a header that seals the old one at the durable position, so that
        what a timed-out write may still put past it later is never read (segread.py). Returns
        the new segment's number. OSError if the backend fails again: still suspended."""
        self._check_failed_only()
        if self.outage is None:
            return self._segno
        with self._sync_lock, self._lock:
            old, end = self._segno, self._tail
            tail = self._resume_tail if self._resume_tail is not None else end
            new = old + 1
            header = self._resume_header
            if header is None:
                header = self._resume_header = pack_segment_header(self.pool_uuid, new, self._now_ns(), end)
            try:
                self.backend.create_segment(new, header)
            except FileExistsError:  # an earlier attempt's create (or the rollover's) landed late
                self._adopt(new, header, end, tail)
            self._resume_header = self._resume_tail = None
        with self._cache_lock:
            self._sizes[old] = end
        self._seals[old] = end
        self._begin(new)
        self.outage = None
        try:  # tidy only: the seal decides, whatever a late write puts past it
            self.backend.truncate_segment(old, end)
        except OSError:
            pass
        return new

    def _adopt(self, segno: int, header: bytes, end: int, tail: int) -> None:
        """Accept an existing new segment if it is one a resume or the rollover made (a late
        create): its header seals the old segment at ``end``, or seals nothing when the old one
        was durable to its tail; and it holds nothing past the header. Else the journal fails."""
        got = self.backend.read_segment(segno, 0, SEGMENT_HEADER_SIZE)
        try:
            unpack_segment_header(got, self.pool_uuid, segno)
            seal = segment_seal(got)
        except ValueError:
            seal = -1
        if (got == header or seal == end or (seal is None and end == tail)) \
                and self.backend.segment_size(segno) <= SEGMENT_HEADER_SIZE:
            return
        self._fail(f"journal segment {segno} exists but is not the one resuming after the outage made")

    def _check_failed_only(self) -> None:
        if self.failed:
            raise VstorError(f"journal failed earlier ({self.failed}); stop the array and run 'vstor pool check'")
