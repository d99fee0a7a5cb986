"""The journal segments' writes on RADOS: aio writes in flight, small appends held, failures kept.

A segment is striped over objects of ``stripe_bytes`` (backend.py). Each append becomes one
``aio_write`` per stripe it touches, with FULL_TRY (a full pool answers ENOSPC or EDQUOT at once
instead of pausing the op). Up to MAX_IN_FLIGHT writes are outstanding; the writer that would
pass that waits for the oldest. Small appends that continue each other are held
(coalesce.py) and sent as one write before anything else touches the segment.

Guarantees backend.py relies on:

- Writes reach the OSD in the order they were made: what is held is sent, under this
  object's lock, before any later write is submitted (the OSD applies one client's writes
  to an object in order, and orders a later read or stat after them).
- :meth:`flush` returns once every write of the segment made before it is complete (on every
  replica), and raises the first that failed, until :meth:`forget`.
- :meth:`forget` (a deleted or abandoned segment) drops its held bytes unsent, waits for its
  writes in flight and forgets its failure.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import Any

from vstor.store.backend.coalesce import Coalescer
from vstor.store.backend.rados.errors import FULL_TRY, os_error
from vstor.store.backend.stripes import stripe_spans

__all__ = ["MAX_IN_FLIGHT", "SegmentWrites"]

MAX_IN_FLIGHT = 64  # aio writes outstanding before a writer waits for the oldest


class SegmentWrites:
    """``io()`` is the journal's I/O context (a stand-in after close); ``stripe_name(segno,
    stripe)`` names an object; ``hold`` is the coalescer's limit (0: hold nothing);
    ``written(segno, pos, n)`` is told after each write is submitted (the read-ahead drops
    what it holds of the range); ``check_open()`` raises once the backend is closed."""

    def __init__(self, rados: Any, io: Callable[[], Any], stripe_name: Callable[[int, int], str],
                 stripe_bytes: int, hold: int, written: Callable[[int, int, int], None] | None,
                 check_open: Callable[[], None]) -> None:
        self._rados, self._io, self._name = rados, io, stripe_name
        self._stripe, self._written, self._check_open = stripe_bytes, written, check_open
        self._lock = threading.Lock()
        self._in_flight: list[tuple[int, Any, str]] = []  # (segno, completion, object), oldest first
        self._failed: dict[int, OSError] = {}  # segno -> the first write that failed
        self.pending = Coalescer(stripe_bytes, hold)  # small appends held for one write

    def write(self, segno: int, pos: int, data: bytes | memoryview) -> None:
        """Append ``data`` at ``pos`` of the segment: held, or sent as aio writes."""
        view = memoryview(data)
        with self._lock:
            pend = self.pending
            self._check_open()  # held bytes would never be sent
            if pend.continues(segno, pos, len(view)):
                pend.add(segno, pos, view)
                return
            self._send_held()  # what is held goes first
        whole = data if isinstance(data, bytes) else None  # sent as it is when one stripe takes it all
        for stripe, off, at, n in stripe_spans(pos, len(view), self._stripe):
            self._submit(segno, stripe, off, whole if whole is not None and n == len(whole) else
                         bytes(view[at : at + n]))
            if self._written is not None:  # after the aio_write: see readahead.py, "Coherence"
                self._written(segno, pos + at, n)

    def send(self, segno: int | None = None) -> None:
        """Send what is held (of ``segno`` only, when given), before a read, size, cut, flush
        or close of the segment."""
        with self._lock:
            self._send_held(segno)

    def wait(self, count: int | None = None, segno: int | None = None) -> None:
        """Wait for the oldest ``count`` writes in flight (all when None; only those of
        ``segno`` when given), recording failures."""
        with self._lock:
            if segno is not None:
                mine = [w for w in self._in_flight if w[0] == segno]
                self._in_flight = [w for w in self._in_flight if w[0] != segno]
            else:
                k = len(self._in_flight) if count is None else count
                mine, self._in_flight = self._in_flight[:k], self._in_flight[k:]
        for s, comp, obj in mine:
            comp.wait_for_complete()
            ret = comp.get_return_value()
            if ret < 0:
                err = OSError(-ret, f"write to journal object {obj} failed: {errno.errorcode.get(-ret, ret)}")
                with self._lock:
                    self._failed.setdefault(s, err)

    def flush(self, segno: int) -> None:
        """Every write of the segment so far complete; OSError for the first that failed."""
        self.send(segno)
        self.wait(segno=segno)
        with self._lock:
            err = self._failed.get(segno)
        if err is not None:
            raise OSError(err.errno, str(err))

    def forget(self, segno: int) -> None:
        """A segment deleted or abandoned: its held bytes never sent, its writes in flight
        waited for, its failure forgotten."""
        with self._lock:
            self.pending.drop(segno)
        self.wait(segno=segno)
        with self._lock:
            self._failed.pop(segno, None)

    def close(self) -> None:
        """Send what is held and wait for every write (before the I/O context closes)."""
        self.send()
        self.wait()

    # -- under the hood ------------------------------------------------------------------------
    def _aio_write(self, segno: int, stripe: int, off: int, data: bytes) -> tuple[Any, str]:
        """Issue one aio write to a stripe object: (completion, object name); OSError if refused."""
        obj = self._name(segno, stripe)
        try:
            with self._rados.WriteOpCtx() as op:
                op.write(data, off)
                return self._io().operate_aio_write_op(op, obj, flags=FULL_TRY), obj
        except self._rados.Error as e:
            raise os_error(e, f"cannot write journal segment {segno}") from None

    def _submit(self, segno: int, stripe: int, off: int, chunk: bytes) -> None:
        """One aio write to a stripe object; waits for the oldest when MAX_IN_FLIGHT are out."""
        comp, obj = self._aio_write(segno, stripe, off, chunk)
        with self._lock:
            self._in_flight.append((segno, comp, obj))
            excess = len(self._in_flight) - MAX_IN_FLIGHT
        if excess > 0:
            self.wait(excess)

    def _send_held(self, segno: int | None = None) -> None:
        """Send the held appends (of ``segno`` only, when given) as one write. Caller holds
        ``_lock``; the aio submission happens under it, so no other write can pass it."""
        if not len(self.pending) or (segno is not None and not self.pending.holds(segno)):
            return
        taken = self.pending.take()
        assert taken is not None
        seg, pos, data = taken
        stripe, off = divmod(pos, self._stripe)
        try:
            comp, obj = self._aio_write(seg, stripe, off, data)
        except OSError as e:
            self._failed.setdefault(seg, e)
            return  # the segment's next flush raises it
        self._in_flight.append((seg, comp, obj))
