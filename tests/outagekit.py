"""A pool backend that behaves like a remote one (RADOS) whose cluster a test can stop, fill and
start again, for the outage tests that need no Ceph (tests/test_outage.py).

``StoppableBackend`` is a LocalBackend whose segments are not offered as local files, so the
journal writes and flushes through it as it does on RADOS. Fault injection only:

* ``stopped``: like a SIGSTOPped OSD. Segment writes are *held* (a message in the stopped OSD's
  socket) and remembered as timed out; flushes, creates, blob writes, reads and probes fail with
  ETIMEDOUT at once (the test needs no real timeout). :meth:`deliver` applies the held writes
  afterwards: the late writes of a SIGCONT.
* ``full``: like a pool over its quota: segment writes are dropped and remembered as failed with
  EDQUOT; creates, blob writes and probes fail with EDQUOT.
* ``create_lands_late``: the next segment create is applied but reported as timed out.

A failed write stays failed for its segment until :meth:`abandon_segment`, as RadosBackend's.
"""

from __future__ import annotations

import errno

from vstor.store.backend.local import LocalBackend

__all__ = ["StoppableBackend"]


class StoppableBackend(LocalBackend):
    kind = "stoppable"

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.stopped = False
        self.full = False
        self.create_lands_late = False
        self.held: list[tuple[int, int, bytes]] = []  # writes a stopped cluster will apply late
        self._failed_segments: dict[int, int] = {}  # segno -> errno of a write that failed

    def _check(self, what: str) -> None:
        if self.stopped:
            raise OSError(errno.ETIMEDOUT, f"{what}: injected timeout (stopped cluster)")
        if self.full:
            raise OSError(errno.EDQUOT, f"{what}: injected EDQUOT (full pool)")

    def local_path(self, segno: int) -> str | None:
        return None

    def write_segment(self, segno: int, pos: int, data: bytes | memoryview) -> None:
        if self.stopped:
            self.held.append((segno, pos, bytes(data)))
            self._failed_segments.setdefault(segno, errno.ETIMEDOUT)
            return
        if self.full:
            self._failed_segments.setdefault(segno, errno.EDQUOT)
            return
        super().write_segment(segno, pos, data)

    def flush_segment(self, segno: int) -> None:
        if self.stopped:
            raise OSError(errno.ETIMEDOUT, "flush: injected timeout (stopped cluster)")
        code = self._failed_segments.get(segno)
        if code is not None:
            raise OSError(code, f"an earlier write to segment {segno} failed ({errno.errorcode[code]})")
        super().flush_segment(segno)

    def create_segment(self, segno: int, header: bytes) -> None:
        self._check(f"create segment {segno}")
        super().create_segment(segno, header)
        if self.create_lands_late:
            self.create_lands_late = False
            raise OSError(errno.ETIMEDOUT, f"create segment {segno}: injected timeout after it was applied")

    def read_segment(self, segno: int, pos: int, size: int) -> bytes:
        if self.stopped:
            raise OSError(errno.ETIMEDOUT, "read: injected timeout (stopped cluster)")
        return super().read_segment(segno, pos, size)

    def put(self, name: str, data: bytes) -> None:
        self._check(f"put {name}")
        super().put(name, data)

    def abandon_segment(self, segno: int) -> None:
        self._failed_segments.pop(segno, None)

    def probe(self) -> None:
        self._check("probe")

    def deliver(self) -> int:
        """Apply the held writes now, late (the cluster came back and processed them). Returns
        how many bytes landed."""
        held, self.held = self.held, []
        for segno, pos, data in held:
            LocalBackend.write_segment(self, segno, pos, data)
            LocalBackend.flush_segment(self, segno)
        return sum(len(d) for _s, _p, d in held)
