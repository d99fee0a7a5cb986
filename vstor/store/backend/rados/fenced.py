"""The daemon's RADOS backend: the one place where losing the pool stops the store for good.

A RADOS client that another host fenced (``osd blocklist add``, see lock.py) gets
ESHUTDOWN (EBLOCKLISTED) from every OSD operation. :class:`FencedBackend` is a RadosBackend
on the same client as the pool lock (so fencing that client fences the store's writes too).
The first such error, or :meth:`FencedBackend.fence` (the pool lock's renewal failed), trips
it, once: ``on_fenced`` is called (the daemon then stops the journal, ``Journal.stop_writes``),
and from then on every write, create, append, flush, cut or delete is refused here with ESHUTDOWN and
a message that says why ("fenced: ..." or "lost ownership ..."), without asking RADOS, so
nothing is written or acknowledged again even after the blocklist expires. Listing and sizing
segments answer from what was last seen, so ``array status`` still answers. Other errors pass
unchanged (timeouts and a full cluster are the journal's failure and resume path).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from vstor.errors import VstorError
from vstor.faults import NO_FAULTS, Faults
from vstor.store.backend.rados.backend import RadosBackend

__all__ = ["FencedBackend", "is_fenced"]

T = TypeVar("T")


def is_fenced(err: BaseException) -> bool:
    """Whether an error says this RADOS client was blocklisted (EBLOCKLISTED is ESHUTDOWN)."""
    return isinstance(err, OSError) and err.errno == errno.ESHUTDOWN


class FencedBackend(RadosBackend):
    def __init__(self, cluster: Any, pool: str, prefix: str, on_fenced: Callable[[OSError], None],
                 faults: Faults = NO_FAULTS, owner_check: Callable[[], None] | None = None) -> None:
        """``cluster`` stays open when this backend closes: the pool lock owns it.
        ``owner_check``: asks the cluster whether the pool lock is still this client's
        (RadosLock.assert_held), for :meth:`check_owner`."""
        self._on_fenced = on_fenced  # set first: RadosBackend.__init__ already calls _call
        self._owner_check = owner_check
        self._trip = threading.Lock()
        self._why: str | None = None
        self._segments: list[int] = []  # as last listed
        self._sizes: dict[int, int] = {}  # as last sized
        super().__init__(cluster, pool, prefix, faults, owns_cluster=False)

    @property
    def fenced(self) -> str | None:
        """Why this backend refuses writes, or None."""
        return self._why

    def fence(self, why: str) -> bool:
        """Refuse every later write, for good. True if this call tripped it."""
        with self._trip:
            if self._why is not None:
                return False
            self._why = why
            return True

    def _check(self) -> None:
        if self._why is not None:
            raise OSError(errno.ESHUTDOWN, self._why)

    def _fenced(self, err: OSError) -> OSError:
        if not is_fenced(err):
            return err
        why = ("fenced: another host took this pool over and blocklisted this host's RADOS client "
               f"({err.strerror or err})")
        if self.fence(why):
            self._on_fenced(OSError(errno.ESHUTDOWN, why))
        return OSError(errno.ESHUTDOWN, self._why or why)

    def _call(self, fn: Callable[[], T], what: str) -> T:
        try:
            return super()._call(fn, what)
        except OSError as e:
            raise self._fenced(e) from None

    # -- writes: refused once tripped -------------------------------------------------------
    def create_segment(self, segno: int, header: bytes) -> None:
        self._check()
        super().create_segment(segno, header)

    def write_segment(self, segno: int, pos: int, data: bytes | memoryview) -> None:
        self._check()
        super().write_segment(segno, pos, data)

    def flush_segment(self, segno: int) -> None:
        self._check()
        try:
            super().flush_segment(segno)
        except OSError as e:
            raise self._fenced(e) from None

    def truncate_segment(self, segno: int, size: int) -> None:
        self._check()
        super().truncate_segment(segno, size)

    def delete_segment(self, segno: int) -> None:
        self._check()
        super().delete_segment(segno)

    def put(self, name: str, data: bytes) -> None:
        self._check()
        super().put(name, data)

    def create(self, name: str, data: bytes) -> None:
        self._check()
        super().create(name, data)

    def delete(self, name: str) -> None:
        self._check()
        super().delete(name)

    def append(self, name: str, data: bytes) -> None:
        self._check()
        super().append(name, data)

    def check_owner(self) -> None:
        """Refused here once tripped; else ``owner_check`` asks the OSD (one round trip). A
        lock that is not ours trips this backend, as a blocklist error does."""
        self._check()
        if self._owner_check is None:
            return
        try:
            self._owner_check()
        except OSError as e:
            raise self._fenced(e) from None
        except VstorError as e:  # LockLost: expired, broken, taken or fenced
            why = str(e)
            if self.fence(why):
                self._on_fenced(OSError(errno.ESHUTDOWN, why))
            raise OSError(errno.ESHUTDOWN, self._why or why) from None

    # -- reads: what status needs keeps answering -------------------------------------------
    def list_segments(self) -> list[int]:
        try:
            self._segments = super().list_segments()
        except OSError as e:
            self._fenced(e)
            if self._why is None:
                raise
        return list(self._segments)

    def segment_size(self, segno: int) -> int:
        try:
            self._sizes[segno] = super().segment_size(segno)
        except OSError as e:
            self._fenced(e)
            if self._why is None:
                raise
        return self._sizes.get(segno, 0)

    def read_segment(self, segno: int, pos: int, size: int) -> bytes:
        try:
            return super().read_segment(segno, pos, size)
        except OSError as e:
            raise self._fenced(e) from None
