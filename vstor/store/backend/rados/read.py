"""Asynchronous reads of journal chunks from RADOS, for the read-ahead (readahead.py).

:class:`ChunkRead` starts one ``aio_read`` of a byte range of one stripe object and waits for
it only when asked. :func:`chunk_fetcher` gives RadosBackend the ``fetch(segno, index)`` that
ReadAhead calls; chunks are CHUNK-aligned, so each lies in one stripe. The read-ahead is off
unless ``VSTOR_RADOS_READAHEAD=1`` (tools/bench_rados.py --readahead compares the two): it has
not yet shown a gain (docs/benchmarks.md §13).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from vstor.store.backend.readahead import CHUNK, ReadAhead

__all__ = ["ChunkRead", "chunk_fetcher", "make_readahead"]


class ChunkRead:
    """One aio_read in flight; :meth:`result` waits for it."""

    __slots__ = ("_comp", "_data")

    def __init__(self, ioctx: Any, rados: Any, obj: str, length: int, offset: int) -> None:
        self._data: bytes | None = None
        try:
            self._comp = ioctx.aio_read(obj, length, offset, oncomplete=self._done)
        except rados.Error:
            self._comp = None  # result() says it failed; the direct read reports why

    def _done(self, _comp: Any, data: bytes | None) -> None:  # a librados thread
        self._data = data

    def result(self) -> bytes | None:
        if self._comp is None:
            return None
        self._comp.wait_for_complete_and_cb()
        ret = self._comp.get_return_value()  # the bytes read
        if ret < 0 or self._data is None:
            return None
        # cut to what was read: python-rados hands back its whole buffer when 0 bytes were read
        return self._data if len(self._data) == ret else self._data[:ret]


def chunk_fetcher(ioctx: Callable[[], Any], rados: Any, stripe_bytes: int,
                  stripe_name: Callable[[int, int], str]) -> Callable[[int, int], ChunkRead]:
    """``ioctx()`` is the backend's journal I/O context at the time of the read: after its close
    that is RadosBackend's stand-in, whose use is an OSError (librados crashes on a closed one)."""
    if stripe_bytes % CHUNK:
        raise ValueError("the read-ahead chunk must divide the stripe size")

    def fetch(segno: int, index: int) -> ChunkRead:
        stripe, off = divmod(index * CHUNK, stripe_bytes)
        return ChunkRead(ioctx(), rados, stripe_name(segno, stripe), CHUNK, off)
    return fetch


def make_readahead(ioctx: Callable[[], Any], rados: Any, stripe_bytes: int,
                   stripe_name: Callable[[int, int], str]) -> ReadAhead | None:
    """The backend's read-ahead when VSTOR_RADOS_READAHEAD=1 turns it on, else None. Off by
    default: on a loaded machine it gained nothing at queue depth 1 and cost at 16
    (docs/benchmarks.md §13); it stays until a quiet run decides."""
    if os.environ.get("VSTOR_RADOS_READAHEAD", "0") != "1":
        return None
    return ReadAhead(chunk_fetcher(ioctx, rados, stripe_bytes, stripe_name))
