"""The daemon's RADOS backend: the one place where a blocklist error stops the store for good.

A RADOS client that another host fenced (``osd blocklist add``, see radoslock.py) gets
ESHUTDOWN (EBLOCKLISTED) from every OSD operation. :class:`FencedBackend` is a RadosBackend
on the same client as the pool lock (so fencing that client fences the store's writes too)
that turns such an error into an OSError whose message says "fenced", after calling
``on_fenced`` once: the daemon then stops the journal (``Journal.stop_writes``), so nothing
is acknowledged again, even if the blocklist expires later. Other errors pass unchanged
(timeouts and a full cluster are the journal's failure/resume path).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from vstor.faults import NO_FAULTS, Faults
from vstor.store.backend.radosbe import RadosBackend

__all__ = ["FencedBackend", "is_fenced"]

T = TypeVar("T")


def is_fenced(err: BaseException) -> bool:
    """Whether an error says this RADOS client was blocklisted (EBLOCKLISTED is ESHUTDOWN)."""
    return isinstance(err, OSError) and err.errno == errno.ESHUTDOWN


class FencedBackend(RadosBackend):
    def __init__(self, cluster: Any, pool: str, prefix: str, on_fenced: Callable[[OSError], None],
                 faults: Faults = NO_FAULTS) -> None:
        """``cluster`` stays open when this backend closes: the pool lock owns it."""
        super().__init__(cluster, pool, prefix, faults, owns_cluster=False)
        self._on_fenced = on_fenced
        self._tripped = threading.Event()

    def _fenced(self, err: OSError) -> OSError:
        if not is_fenced(err):
            return err
        if not self._tripped.is_set():
            self._tripped.set()
            self._on_fenced(err)
        return OSError(errno.ESHUTDOWN, f"fenced: another host took this pool over and blocklisted this host's "
                                        f"RADOS client ({err.strerror or err})")

    def _call(self, fn: Callable[[], T], what: str) -> T:
        try:
            return super()._call(fn, what)
        except OSError as e:
            raise self._fenced(e) from None

    def flush_segment(self, segno: int) -> None:
        try:
            super().flush_segment(segno)
        except OSError as e:
            raise self._fenced(e) from None

    def read_segment(self, segno: int, pos: int, size: int) -> bytes:
        try:
            return super().read_segment(segno, pos, size)
        except OSError as e:
            raise self._fenced(e) from None
