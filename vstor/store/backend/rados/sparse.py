"""RadosSparseFiles: sparse files (optical disc images) on RADOS, only their written stripes stored.

Layout (docs/formats.md, "Optical discs on RADOS"): the sparse area ``AREA`` of
``rados://POOL/PREFIX`` is the RADOS namespace ``PREFIX/AREA``; the file ``NAME`` (such as
``LIB/DISC01.side0.img``) is the objects ``NAME.SSSSSSSS`` (SSSSSSSS: the stripe index, 8 hex
digits), FILE_STRIPE bytes of the file each, as a striped cartridge (files.py), except that
**only the stripes something was written into exist**: a stripe that does not exist, and the bytes
of a stripe past its object's end, read as zeros and take no space. Stripe 0, the *head*, exists
for as long as the file does (created empty with the file), and its omap is the file's index: one
key per stripe that was written (``SSSSSSSS``, empty value).

Guarantees:

* **The index covers every stripe.** A stripe's key is set (a synchronous omap write on the
  head) before the first write into the stripe is issued, and removed only after the stripe's
  object is gone, so after any crash the index lists every stripe that exists (and perhaps one
  whose first write never landed: it reads as zeros, and removing it finds nothing). Listing a
  file's stripes is one omap read, never a scan of the namespace.
* **Length** is the end of the last indexed stripe's object (one ``stat``); an extending
  ``truncate`` makes that stripe reach the new length (``trunc``: a hole, nothing stored).
* Writes are ``aio_write`` calls, up to MAX_IN_FLIGHT per file in flight; ``sync`` waits for
  every completion (on every replica: durable) and raises the first failure. A read issued
  after a write by the same client sees it (the OSD orders one client's operations on an object).
* ``truncate`` and ``delete`` remove stripes from the last one backwards, then their keys (the
  head last, with its index); ``rename`` writes the destination's head with the whole index in
  one operation, copies the other stripes (``write_full``), then deletes the source: a crash
  leaves both names, the source whole.

Errors: librados errors become builtin OSError with their errno (errors.os_error).
"""

from __future__ import annotations

import errno

from vstor.store.backend.rados.errors import omap_keys, os_error
from vstor.store.backend.rados.files import FILE_STRIPE, AioWrites, RadosFiles, StripedFile, stripe_name
from vstor.store.backend.stripes import stripe_spans

__all__ = ["RadosSparseFile", "RadosSparseFiles"]

def _key(stripe: int) -> str:
    return f"{stripe:08x}"


class RadosSparseFile(StripedFile):
    area: RadosSparseFiles

    def __init__(self, area: RadosSparseFiles, name: str, create: bool) -> None:
        self.area, self.name, self.io = area, name, area.io
        self._writes = AioWrites(area, name)
        index = area.index(name)
        if index is None:
            if not create:
                raise FileNotFoundError(errno.ENOENT, f"{area.describe(name)} does not exist")
            area.call(lambda: self.io.write_full(stripe_name(name, 0), b""), f"cannot create {area.describe(name)}")
            index, self.created = set(), True
        self.stripes: set[int] = index
        self._size = area.sparse_length(name, index)

    # -- writing ---------------------------------------------------------------------------
    def pwrite(self, data: bytes | memoryview, pos: int) -> None:
        view = memoryview(data)
        for stripe, off, at, n in stripe_spans(pos, len(view), FILE_STRIPE):
            if stripe not in self.stripes:
                self.area.set_keys(self.name, [stripe])  # in the index before any byte of it is written
                self.stripes.add(stripe)
            self._writes.write(stripe, off, bytes(view[at : at + n]))
            self._size = max(self._size, pos + at + n)

    def sync(self, metadata: bool = False) -> None:
        self._writes.wait()
        self._writes.check()

    def truncate(self, size: int) -> None:
        self._writes.wait()
        area, what = self.area, f"cannot cut {self.area.describe(self.name)}"
        if size <= 0:
            gone = sorted(self.stripes, reverse=True)
            area.remove_objects(self.name, [k for k in gone if k])
            area.call(lambda: self.io.trunc(stripe_name(self.name, 0), 0), what)  # the head stays, empty
        else:
            last, off = divmod(size - 1, FILE_STRIPE)
            off += 1  # the new last stripe and its length (1 .. FILE_STRIPE)
            gone = sorted((k for k in self.stripes if k > last), reverse=True)
            area.remove_objects(self.name, gone)
        area.remove_keys(self.name, gone)
        self.stripes -= set(gone)
        if size > 0:
            if last not in self.stripes:  # the last stripe must reach the new end (a hole: nothing stored)
                area.set_keys(self.name, [last])
                self.stripes.add(last)
            area.sized(self.name, last, off)
        self._size = max(0, size)

    def close(self) -> None:
        self.sync()

    # -- reading ---------------------------------------------------------------------------
    def _piece(self, stripe: int, off: int, n: int) -> bytes:
        """Always ``n`` bytes: a hole, or past the object's end, reads as zeros."""
        got = self._read(stripe, n, off) if stripe in self.stripes else b""
        return got + bytes(n - len(got))


class RadosSparseFiles(RadosFiles):
    """The sparse area ``area`` of a RADOS pool: ``ioctx`` is set to its namespace, and owned.
    Listing (``listdir``, ``remove_tree``) is RadosFiles': the heads are the ``.00000000`` objects."""

    def index(self, name: str) -> set[int] | None:
        """The stripes in a file's index, or None when the file does not exist (no head)."""
        keys = self.call(lambda: omap_keys(self.rados, self.io, stripe_name(name, 0)),
                         f"cannot read the index of {self.describe(name)}")
        return None if keys is None else {int(k, 16) for k in keys}

    def set_keys(self, name: str, stripes: list[int]) -> None:
        self._omap(name, stripes, add=True)

    def sized(self, name: str, stripe: int, length: int) -> None:
        """Cut or extend (as a hole) a stripe's object to ``length`` bytes, creating it if it is
        missing (an indexed stripe whose first write never landed), in one operation."""
        with self.rados.WriteOpCtx() as op:
            op.new(self.rados.LIBRADOS_CREATE_IDEMPOTENT)
            op.truncate(length)
            self.call(lambda: self.io.operate_write_op(op, stripe_name(name, stripe)),
                      f"cannot cut {self.describe(name)}")

    def remove_keys(self, name: str, stripes: list[int]) -> None:
        self._omap(name, stripes, add=False)

    def _omap(self, name: str, stripes: list[int], add: bool) -> None:
        if not stripes:
            return
        keys = tuple(_key(k) for k in stripes)
        with self.rados.WriteOpCtx() as op:
            if add:
                self.io.set_omap(op, keys, tuple(b"" for _ in keys))
            else:
                self.io.remove_omap_keys(op, keys)
            self.call(lambda: self.io.operate_write_op(op, stripe_name(name, 0)),
                      f"cannot update the index of {self.describe(name)}")

    def sparse_length(self, name: str, stripes: set[int]) -> int:
        """The end of the last indexed stripe that exists (0 when none does)."""
        for k in sorted(stripes, reverse=True):
            got = self._stat(name, k)
            if got is not None:
                return k * FILE_STRIPE + got
        return 0

    def open(self, name: str, create: bool = False) -> RadosSparseFile:  # type: ignore[override]
        return RadosSparseFile(self, name, create)

    def _need(self, name: str) -> set[int]:
        index = self.index(name)
        if index is None:
            raise FileNotFoundError(errno.ENOENT, f"{self.describe(name)} does not exist")
        return index

    def size(self, name: str) -> int:
        return self.sparse_length(name, self._need(name))

    def allocated(self, name: str) -> int:
        """Stored bytes, counted in whole stripes but the last (0 for a file with nothing written)."""
        index = self._need(name)
        if not index:
            return 0
        return (len(index) - 1) * FILE_STRIPE + (self._stat(name, max(index)) or 0)

    def delete(self, name: str) -> None:
        index = self.index(name)
        if index is None:
            return
        self.remove_objects(name, [k for k in index if k])
        self.remove_objects(name, [0])  # the head, and the index with it

    def rename(self, src: str, dst: str) -> None:
        index = self._need(src)
        self.delete(dst)
        read = self.call(lambda: self.io.read(stripe_name(src, 0), FILE_STRIPE, 0), f"cannot read {src}") \
            if 0 in index else b""
        keys = tuple(_key(k) for k in sorted(index))
        with self.rados.WriteOpCtx() as op:  # the head, holding stripe 0 and the whole index, in one write
            op.write_full(read)
            self.io.set_omap(op, keys, tuple(b"" for _ in keys))
            self.call(lambda: self.io.operate_write_op(op, stripe_name(dst, 0)), f"cannot write {dst}")
        for k in sorted(index - {0}):
            try:
                data = self.io.read(stripe_name(src, k), FILE_STRIPE, 0)
            except self.rados.ObjectNotFound:
                continue  # indexed, never written: nothing to copy
            except self.rados.Error as e:
                raise os_error(e, f"cannot read {src}") from None
            self.call(lambda k=k, data=data: self.io.write_full(stripe_name(dst, k), data), f"cannot write {dst}")
        self.delete(src)
