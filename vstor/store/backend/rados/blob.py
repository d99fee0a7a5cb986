"""Blobs larger than one RADOS write: stripes under a generation, switched by a small head.

A blob of at most ``max_blob`` bytes is one object, written by one ``write_full``
(backend.py). A larger one (a checkpoint of a pool with very many maps) cannot be: one write
must stay under ``osd_max_write_size``. It is kept as (docs/formats.md, "Large blobs on RADOS"):

* **stripes**: objects ``.striped/NAME/GEN.KKKK`` in the blob namespace (GEN: 16 hex digits,
  random for each write; KKKK: the stripe index, hex), each ``stripe`` bytes except the last,
  written with ``aio_write_full``. Their names contain "/" after ``.striped``, so
  ``list_blobs`` never lists them as blobs;
* **the head**: the object NAME itself, HEAD_SIZE bytes (:data:`HEAD`), naming the generation,
  the length, the stripe size and count and the xxh3-64 of the whole content.

Replace: every stripe of a new generation is written, then the head (one ``write_full``, so
a reader finds the old head or the new one, and each names a complete set of stripes), then
the other generations' stripes of NAME are removed: on a client's first striped write of NAME
every one its listing finds (what a crash left behind included), later those of the head it
replaced (no listing: a checkpoint's cost does not grow with the namespace). A
reader that finds a stripe gone (the writer removed the old generation after the reader read
its head) reads the head again; the whole content's checksum is verified, so a mix of two
generations is never returned. Content that begins with HEAD_MAGIC is always striped, so a
plain blob is never taken for a head.

The head format (:func:`encode_head`, :func:`decode_head`) is pure; :class:`StripedBlobs`
does the I/O on the ioctx it is given.
"""

from __future__ import annotations

import errno
import functools
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import xxhash

__all__ = ["HEAD", "HEAD_MAGIC", "HEAD_SIZE", "STRIPED_DIR", "Head", "StripedBlobs", "decode_head", "encode_head"]

HEAD_MAGIC = b"VSTBLOB1"
HEAD_VERSION = 1
HEAD = struct.Struct("<8sII8sQQQQ")  # magic, version, flags, generation, length, stripe, count, content xxh3
HEAD_SIZE = HEAD.size + 8  # + the head's own xxh3-64
STRIPED_DIR = ".striped/"
READ_RETRIES = 3  # head re-reads when a stripe vanished under a reader (a replace in between)
MAX_IN_FLIGHT = 64


@dataclass(frozen=True)
class Head:
    generation: bytes  # 8 random bytes
    length: int
    stripe: int
    count: int
    checksum: int  # xxh3-64 of the whole content

    def stripe_name(self, name: str, k: int) -> str:
        return f"{STRIPED_DIR}{name}/{self.generation.hex()}.{k:04x}"


def encode_head(h: Head) -> bytes:
    raw = HEAD.pack(HEAD_MAGIC, HEAD_VERSION, 0, h.generation, h.length, h.stripe, h.count, h.checksum)
    return raw + struct.pack("<Q", xxhash.xxh3_64_intdigest(raw))


def decode_head(raw: bytes, where: str) -> Head:
    """The head in ``raw``; OSError EIO says what is wrong with it."""
    if len(raw) != HEAD_SIZE:
        raise OSError(errno.EIO, f"{where}: a striped blob's head is {len(raw)} bytes, not {HEAD_SIZE}")
    (csum,) = struct.unpack_from("<Q", raw, HEAD.size)
    if xxhash.xxh3_64_intdigest(raw[:HEAD.size]) != csum:
        raise OSError(errno.EIO, f"{where}: the striped blob's head fails its checksum")
    magic, version, _flags, gen, length, stripe, count, checksum = HEAD.unpack_from(raw)
    if magic != HEAD_MAGIC or version != HEAD_VERSION:
        raise OSError(errno.EIO, f"{where}: striped blob head version {version}; this vstor reads {HEAD_VERSION}")
    if stripe <= 0 or count != -(-length // stripe):
        raise OSError(errno.EIO, f"{where}: the striped blob's head is inconsistent")
    return Head(gen, length, stripe, count, checksum)


class StripedBlobs:
    """The striped form of the blobs of one RADOS namespace (``io``). ``call(fn, what)`` runs a
    librados call and turns its error into an OSError (RadosBackend._call)."""

    def __init__(self, io: Any, rados: Any, max_blob: int, stripe: int,
                 call: Callable[[Callable[[], Any], str], Any]) -> None:
        if max_blob < HEAD_SIZE or stripe <= 0:
            raise ValueError(f"max_blob {max_blob} and stripe {stripe} are too small")
        self.io, self._rados, self.max_blob, self.stripe, self._call = io, rados, max_blob, stripe, call
        self._heads: dict[str, Head] = {}  # the heads this client read or wrote, so a replace removes their stripes
        self._swept: set[str] = set()  # names whose stripes were listed once (what a crash left) by this client

    def needs_stripes(self, data: bytes | memoryview) -> bool:
        return len(data) > self.max_blob or bytes(data[:len(HEAD_MAGIC)]) == HEAD_MAGIC

    @staticmethod
    def is_head(raw: bytes) -> bool:
        return raw[:len(HEAD_MAGIC)] == HEAD_MAGIC

    # -- writing -----------------------------------------------------------------------------
    def _write_stripes(self, name: str, data: bytes | memoryview) -> Head:
        view = memoryview(data)
        count = -(-len(view) // self.stripe)
        head = Head(os.urandom(8), len(view), self.stripe, count, xxhash.xxh3_64_intdigest(view))
        pending: list[tuple[Any, str]] = []
        try:
            for k in range(count):
                obj = head.stripe_name(name, k)
                chunk = bytes(view[k * self.stripe:(k + 1) * self.stripe])
                write = functools.partial(self.io.aio_write_full, obj, chunk)
                pending.append((self._call(write, f"cannot write {name}"), obj))
                if len(pending) >= MAX_IN_FLIGHT:
                    self._wait(pending.pop(0), name)
            while pending:
                self._wait(pending.pop(0), name)
        except BaseException:
            for comp, _obj in pending:
                comp.wait_for_complete()
            self._remove_stripes(name, head)
            raise
        return head

    @staticmethod
    def _wait(item: tuple[Any, str], name: str) -> None:
        comp, obj = item
        comp.wait_for_complete()
        ret = comp.get_return_value()
        if ret < 0:
            raise OSError(-ret, f"cannot write {name} (stripe {obj}): {errno.errorcode.get(-ret, ret)}")

    def put(self, name: str, data: bytes | memoryview) -> None:
        """Replace ``name`` with ``data`` in the striped form (atomic: see the module's text)."""
        old = self._heads.get(name)
        head = self._write_stripes(name, data)
        try:
            self._call(lambda: self.io.write_full(name, encode_head(head)), f"cannot write {name}")
        except BaseException:
            self._remove_stripes(name, head)
            raise
        self._heads[name] = head
        if name not in self._swept:  # the first striped write of this client: list what others left
            self.sweep(name, keep=head)
            self._swept.add(name)
        elif old is not None:
            self._remove_stripes(name, old)

    def create(self, name: str, data: bytes | memoryview) -> None:
        """Create ``name`` exclusively in the striped form; FileExistsError if it exists."""
        rados = self._rados
        head = self._write_stripes(name, data)
        try:
            with rados.WriteOpCtx() as op:
                op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
                op.write_full(encode_head(head))
                self._call(lambda: self.io.operate_write_op(op, name), f"cannot create {name}")
        except BaseException:
            self._remove_stripes(name, head)
            raise
        self._heads[name] = head

    def replaced(self, name: str) -> None:
        """``name`` was replaced by a plain blob: remove the stripes of the head this client knew."""
        old = self._heads.pop(name, None)
        if old is not None:
            self._remove_stripes(name, old)

    def deleted(self, name: str, head_raw: bytes | None) -> None:
        """``name`` (whose content was ``head_raw`` when it is known) was deleted: remove its stripes."""
        old = self._heads.pop(name, None)
        if old is None and head_raw is not None and self.is_head(head_raw):
            try:
                old = decode_head(head_raw, name)
            except OSError:
                old = None
        if old is not None:
            self._remove_stripes(name, old)

    def sweep(self, name: str, keep: Head | None) -> None:
        """Remove every stripe of ``name`` not of ``keep``'s generation (also a crash's leftovers)."""
        base = f"{STRIPED_DIR}{name}/"
        mine = f"{base}{keep.generation.hex()}." if keep else None
        keys = self._call(lambda: [o.key for o in self.io.list_objects() if o.key.startswith(base)],
                          f"cannot list the stripes of {name}")
        for key in keys:
            if mine is None or not key.startswith(mine):
                self._remove(key)

    def _remove_stripes(self, name: str, head: Head) -> None:
        for k in range(head.count - 1, -1, -1):
            self._remove(head.stripe_name(name, k))

    def _remove(self, obj: str) -> None:
        try:
            self.io.remove_object(obj)
        except self._rados.ObjectNotFound:
            pass
        except self._rados.Error:
            pass  # left behind: the next striped write of this blob sweeps it

    # -- reading -----------------------------------------------------------------------------
    def read(self, name: str, head_raw: bytes, reread: Callable[[], bytes]) -> bytes:
        """The content of ``name`` whose head object holds ``head_raw``; ``reread`` reads the
        head object again (after a replace removed the stripes being read)."""
        for _attempt in range(READ_RETRIES):
            head = decode_head(head_raw, name)
            got = self._read_stripes(name, head)
            if got is not None:
                self._heads[name] = head
                return got
            newer = reread()
            if newer == head_raw:
                break
            head_raw = newer
            if not self.is_head(head_raw):
                self._heads.pop(name, None)
                return head_raw
        raise OSError(errno.EIO, f"{name}: a stripe of the striped blob is missing")

    def _read_stripes(self, name: str, head: Head) -> bytes | None:
        """The whole content, or None if a stripe is gone."""
        parts: list[bytes] = []
        for k in range(head.count):
            want = min(head.stripe, head.length - k * head.stripe)
            obj = head.stripe_name(name, k)
            try:
                got = self.io.read(obj, want + 1, 0)
            except self._rados.ObjectNotFound:
                return None
            except self._rados.Error as e:
                raise OSError(abs(getattr(e, "errno", 0) or errno.EIO), f"cannot read {name}: {e}") from None
            if len(got) != want:
                raise OSError(errno.EIO, f"{name}: stripe {k} holds {len(got)} bytes, not {want}")
            parts.append(got)
        data = b"".join(parts)
        if xxhash.xxh3_64_intdigest(data) != head.checksum:
            raise OSError(errno.EIO, f"{name}: the striped blob fails its checksum")
        return data
