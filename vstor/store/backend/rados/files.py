"""RadosFiles: a pool's large files (tape cartridges) on RADOS, striped over objects.

Layout (docs/formats.md, "Cartridges and the backup catalog on RADOS"): the area ``AREA`` of
``rados://POOL/PREFIX`` is the RADOS namespace ``PREFIX/AREA``; the file ``NAME`` (such as
``LIB/VT0001L9.tape``) is the objects ``NAME.SSSSSSSS`` (SSSSSSSS: the stripe index, 8 hex
digits), every one FILE_STRIPE bytes long except the last.

Guarantees:

* **Prefix.** The first write into a stripe past the last one that exists waits until every
  write in flight has completed. So a stripe exists only if every stripe before it is
  complete, and the bytes in the cluster are always a prefix of the bytes written, with no
  gap, whatever the moment of a crash; the length is then exact: found by a galloping
  search over the stripes (O(log n) ``stat`` calls), never stored.
* **Batched, asynchronous writes.** ``pwrite`` issues ``aio_write`` calls (up to
  MAX_IN_FLIGHT at a time, then it waits for the oldest); ``sync`` waits for every
  completion (a RADOS write completes once it is on every replica: durable) and raises the
  first failure. A read issued after a write by the same client sees it (the OSD orders a
  client's operations on one object).
* **Large reads.** A read smaller than CACHE_BELOW is served from a copy of its whole stripe
  (one round trip per FILE_STRIPE bytes when a tape is read block by block); writes and
  truncation drop the copy.
* ``truncate`` removes stripes from the last one backwards, so a crash in the middle leaves
  a longer prefix, never a gap; ``delete`` likewise. ``rename`` copies then deletes (RADOS
  has no rename): a crash in between leaves both names, the source whole.

Errors: librados errors become builtin OSError with their errno (errors.os_error).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterable
from typing import Any

from vstor.store.backend.files import AreaFile, FileArea
from vstor.store.backend.rados.errors import os_error
from vstor.store.backend.stripes import stripe_spans

__all__ = ["CACHE_BELOW", "FILE_STRIPE", "MAX_IN_FLIGHT", "AioWrites", "RadosFile", "RadosFiles", "StripedFile",
           "read_stripe", "stripe_name"]

FILE_STRIPE = 4 * 1024 * 1024
MAX_IN_FLIGHT = 32  # aio writes outstanding per file before a writer waits for the oldest
CACHE_BELOW = 1024 * 1024  # reads smaller than this go through the one-stripe copy
STRIPE_SUFFIX = ".%08x"


def stripe_name(name: str, stripe: int) -> str:
    return name + STRIPE_SUFFIX % stripe


def read_stripe(io: Any, area: Any, name: str, stripe: int, n: int, off: int) -> bytes:
    """Up to ``n`` bytes at ``off`` of a file's stripe object; b"" when the object does not exist.
    ``area`` is the file's :class:`RadosFiles` (its rados module and names)."""
    try:
        return io.read(stripe_name(name, stripe), n, off)
    except area.rados.ObjectNotFound:
        return b""
    except area.rados.Error as e:
        raise os_error(e, f"cannot read {area.describe(name)}") from None


class AioWrites:
    """The aio writes of one file in flight: at most MAX_IN_FLIGHT (a writer waits for the
    oldest beyond), the first failure kept for :meth:`check`. Shared by the striped and the
    sparse files."""

    def __init__(self, area: RadosFiles, name: str) -> None:
        self.area, self.name = area, name
        self._lock = threading.Lock()
        self._in_flight: list[Any] = []  # completions, oldest first
        self._failed: OSError | None = None

    def write(self, stripe: int, off: int, data: bytes) -> None:
        """Issue one aio write into a stripe object; OSError if librados refuses it."""
        try:
            comp = self.area.io.aio_write(stripe_name(self.name, stripe), data, off)
        except self.area.rados.Error as e:
            raise os_error(e, f"cannot write {self.area.describe(self.name)}") from None
        with self._lock:
            self._in_flight.append(comp)
            excess = len(self._in_flight) - MAX_IN_FLIGHT
        if excess > 0:
            self.wait(excess)

    def wait(self, count: int | None = None) -> None:
        """Wait for the oldest ``count`` writes (all when None), noting the first failure."""
        with self._lock:
            k = len(self._in_flight) if count is None else count
            mine, self._in_flight = self._in_flight[:k], self._in_flight[k:]
        for comp in mine:
            comp.wait_for_complete()
            ret = comp.get_return_value()
            if ret < 0 and self._failed is None:
                self._failed = OSError(-ret, f"write to {self.area.describe(self.name)} failed: "
                                             f"{errno.errorcode.get(-ret, ret)}")

    def check(self) -> None:
        """Raise the first failure of a write waited for."""
        if self._failed is not None:
            raise OSError(self._failed.errno, str(self._failed))


class StripedFile(AreaFile):
    """What the striped and the sparse files share: their length, and a read walked stripe by
    stripe, each piece from :meth:`_piece` (a short piece ends the read)."""

    area: RadosFiles
    name: str
    _size: int

    def size(self) -> int:
        return self._size

    def pread(self, size: int, pos: int) -> bytes:
        size = max(0, min(size, self._size - pos))
        parts: list[bytes] = []
        for stripe, off, _at, n in stripe_spans(pos, size, FILE_STRIPE):
            got = self._piece(stripe, off, n)
            parts.append(got)
            if len(got) < n:
                break
        return b"".join(parts)

    def _piece(self, stripe: int, off: int, n: int) -> bytes:
        raise NotImplementedError

    def _read(self, stripe: int, n: int, off: int) -> bytes:
        return read_stripe(self.area.io, self.area, self.name, stripe, n, off)


class RadosFile(StripedFile):
    def __init__(self, area: RadosFiles, name: str, create: bool) -> None:
        self.area, self.name, self.io = area, name, area.io
        self._writes = AioWrites(area, name)
        self._cache: tuple[int, bytes] | None = None  # (stripe, its bytes)
        self.stripes = area.stripe_count(name)  # stripe objects that exist (or are being written)
        self._size = area.length(name, self.stripes)
        if self.stripes == 0:
            if not create:
                raise FileNotFoundError(errno.ENOENT, f"{area.describe(name)} does not exist")
            area.call(lambda: self.io.write_full(stripe_name(name, 0), b""), f"cannot create {area.describe(name)}")
            self.stripes, self.created = 1, True

    # -- writing ---------------------------------------------------------------------------
    def pwrite(self, data: bytes | memoryview, pos: int) -> None:
        view = memoryview(data)
        self._cache = None
        for stripe, off, at, n in stripe_spans(pos, len(view), FILE_STRIPE):
            if stripe >= self.stripes:
                self._writes.wait()  # the prefix rule: every earlier write lands before a new stripe starts
                self._writes.check()
                if stripe > self.stripes:  # a write past the end: the stripes between are zeros
                    self._fill(stripe)
            self._writes.write(stripe, off, bytes(view[at : at + n]))
            self.stripes = max(self.stripes, stripe + 1)
            self._size = max(self._size, pos + at + n)

    def _fill(self, stripe: int) -> None:
        """Make stripes up to ``stripe`` (excluded) whole: zeros where nothing was written."""
        for k in range(self.stripes - 1, stripe):
            self._sized(k, FILE_STRIPE)
        self.stripes = stripe
        self._size = max(self._size, stripe * FILE_STRIPE)

    def _sized(self, k: int, length: int) -> None:
        """Set stripe ``k`` to ``length`` bytes (zeros past its end), creating it if it is new."""
        obj, what = stripe_name(self.name, k), f"cannot extend {self.area.describe(self.name)}"
        if k >= self.stripes:
            self.area.call(lambda: self.io.write_full(obj, b""), what)
        self.area.call(lambda: self.io.trunc(obj, length), what)

    def sync(self, metadata: bool = False) -> None:
        self._writes.wait()
        self._writes.check()

    def truncate(self, size: int) -> None:
        self._writes.wait()
        self._cache = None
        keep, off = divmod(size, FILE_STRIPE)
        if off == 0 and keep:
            keep, off = keep - 1, FILE_STRIPE
        if keep >= self.stripes:  # longer: extend
            self._fill(keep)
            self._sized(keep, off)
            self.stripes = keep + 1
        else:
            self.area.remove_stripes(self.name, keep + 1, self.stripes)
            self.area.call(lambda: self.io.trunc(stripe_name(self.name, keep), off),
                           f"cannot cut {self.area.describe(self.name)}")
            self.stripes = keep + 1
        self._size = size

    def close(self) -> None:
        self.sync()
        self._cache = None

    # -- reading ---------------------------------------------------------------------------
    def _piece(self, stripe: int, off: int, n: int) -> bytes:
        """Up to ``n`` bytes (short at the file's end): small reads from a cached stripe."""
        return self._stripe(stripe)[off : off + n] if n < CACHE_BELOW else self._read(stripe, n, off)

    def _stripe(self, stripe: int) -> bytes:
        if self._cache is None or self._cache[0] != stripe:
            self._cache = (stripe, self._read(stripe, FILE_STRIPE, 0))
        return self._cache[1]


class RadosFiles(FileArea):
    """The area ``area`` of a RADOS pool: ``ioctx`` is set to its namespace, and owned."""

    kind = "rados"

    def __init__(self, ioctx: Any, where: str) -> None:
        import rados
        self.rados, self.io, self.where = rados, ioctx, where

    def describe(self, name: str) -> str:
        return f"{self.where}/{name}"

    def call(self, fn: Any, what: str) -> Any:
        try:
            return fn()
        except self.rados.Error as e:
            raise os_error(e, what) from None

    def _stat(self, name: str, stripe: int) -> int | None:
        try:
            return self.io.stat(stripe_name(name, stripe))[0]
        except self.rados.ObjectNotFound:
            return None
        except self.rados.Error as e:
            raise os_error(e, f"cannot stat {self.describe(name)}") from None

    def stripe_count(self, name: str) -> int:
        """How many stripes exist (they form a prefix: 0 .. count-1): gallop, then bisect."""
        if self._stat(name, 0) is None:
            return 0
        lo, hi = 1, 2  # stripe lo - 1 exists; is stripe hi - 1 there too?
        while self._stat(name, hi - 1) is not None:
            lo, hi = hi, hi * 2
        a, b = lo, hi - 1  # stripe a - 1 exists, stripe b does not: the first missing one is in [a, b]
        while a < b:
            mid = (a + b) // 2
            if self._stat(name, mid) is not None:
                a = mid + 1
            else:
                b = mid
        return a

    def length(self, name: str, stripes: int) -> int:
        if not stripes:
            return 0
        return (stripes - 1) * FILE_STRIPE + (self._stat(name, stripes - 1) or 0)

    def open(self, name: str, create: bool = False) -> RadosFile:
        return RadosFile(self, name, create)

    def exists(self, name: str) -> bool:
        return self._stat(name, 0) is not None

    def size(self, name: str) -> int:
        stripes = self.stripe_count(name)
        if not stripes:
            raise FileNotFoundError(errno.ENOENT, f"{self.describe(name)} does not exist")
        return self.length(name, stripes)

    def remove_stripes(self, name: str, first: int, end: int) -> None:
        """Remove stripes [first, end), the last first."""
        self.remove_objects(name, range(first, end))

    def remove_objects(self, name: str, stripes: Iterable[int]) -> None:
        """Remove the given stripes' objects, the last first (a file stays a prefix of its
        stripes if this stops half way)."""
        for k in sorted(stripes, reverse=True):
            try:
                self.io.remove_object(stripe_name(name, k))
            except self.rados.ObjectNotFound:
                pass
            except self.rados.Error as e:
                raise os_error(e, f"cannot remove {self.describe(name)}") from None

    def delete(self, name: str) -> None:
        self.remove_stripes(name, 0, self.stripe_count(name))

    def rename(self, src: str, dst: str) -> None:
        count = self.stripe_count(src)
        if not count:
            raise FileNotFoundError(errno.ENOENT, f"{self.describe(src)} does not exist")
        self.delete(dst)
        for k in range(count):
            data = self.call(lambda k=k: self.io.read(stripe_name(src, k), FILE_STRIPE, 0), f"cannot read {src}")
            self.call(lambda k=k, data=data: self.io.write_full(stripe_name(dst, k), data), f"cannot write {dst}")
        self.delete(src)

    def _names(self) -> list[str]:
        """Every file of the area (one namespace listing: its stripe-0 objects)."""
        first = STRIPE_SUFFIX % 0
        return self.call(lambda: sorted(o.key[: -len(first)] for o in self.io.list_objects()
                                        if o.key.endswith(first)), f"cannot list {self.where}")

    def listdir(self, directory: str) -> list[str]:
        rel = directory.rstrip("/") + "/" if directory.rstrip("/") else ""
        return [n[len(rel):] for n in self._names() if n.startswith(rel) and "/" not in n[len(rel):]]

    def remove_tree(self, directory: str) -> None:
        rel = directory.rstrip("/") + "/"
        for n in self._names():
            if n.startswith(rel):
                self.delete(n)

    def close(self) -> None:
        self.io.close()
