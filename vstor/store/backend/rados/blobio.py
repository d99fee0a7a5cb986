"""The blobs of a pool on RADOS: one object each in the namespace ``PREFIX`` (backend.py).

A mixin of RadosBackend, kept apart from the journal segments' striped I/O. ``put`` is one
``write_full`` (RADOS applies a single-object operation atomically, and it returns once every
replica has it); ``create`` an exclusive-create write op; a blob over the backend's
``max_blob`` is striped under a generation and switched by a small head object
(blob.py); ``append`` is the version-asserted RADOS append (append.py). Every write
carries FULL_TRY, so a full pool answers ENOSPC at once (errors.py).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from vstor.faults import Faults
from vstor.store.backend.rados.append import BlobAppender
from vstor.store.backend.rados.blob import HEAD_SIZE, StripedBlobs
from vstor.store.backend.rados.errors import FULL_TRY, os_error

__all__ = ["RadosBlobIO"]


class RadosBlobIO:
    # Provided by RadosBackend.
    meta: Any  # the I/O context of the namespace PREFIX
    prefix: str
    faults: Faults
    blobs: StripedBlobs
    _rados: Any
    _lock: threading.Lock
    _appender: BlobAppender | None
    _call: Callable[..., Any]
    _remove: Callable[[Any, str], None]
    _check_open: Callable[[], None]
    _open_io: Callable[[str], Any]

    def get(self, name: str) -> bytes:
        def whole() -> bytes:  # one read op returns one state of the object: asked for more than it holds, all of it
            size, _mtime = self._call(lambda: self.meta.stat(name), f"cannot read {name}")
            while True:
                got = self._call(functools.partial(self.meta.read, name, size + 1, 0), f"cannot read {name}")
                if len(got) <= size:
                    return got
                size = 2 * size + 4096  # it grew after the stat (an append, a longer replace): read again
        raw = whole()
        return self.blobs.read(name, raw, whole) if self.blobs.is_head(raw) else raw

    def put(self, name: str, data: bytes) -> None:
        self.faults.hit("backend.put")
        if self.blobs.needs_stripes(data):
            self.blobs.put(name, data)
            return
        with self._rados.WriteOpCtx() as op:
            op.write_full(bytes(data))
            self._call(lambda: self.meta.operate_write_op(op, name, flags=FULL_TRY), f"cannot write {name}")
        self.blobs.replaced(name)

    def create(self, name: str, data: bytes) -> None:
        rados = self._rados
        if self.blobs.needs_stripes(data):
            self.blobs.create(name, data)
            return
        with rados.WriteOpCtx() as op:
            op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
            op.write_full(bytes(data))
            self._call(lambda: self.meta.operate_write_op(op, name, flags=FULL_TRY), f"cannot create {name}")

    def read_tail(self, name: str, size: int) -> tuple[int, bytes]:
        """One ``stat`` and one read of the last ``size`` bytes and one more: a read op sees one
        state of the object, which is the stat's length exactly when the read ends at that
        length; otherwise (appended or replaced in between) both again. A striped blob is read
        whole."""
        while True:
            length, _mtime = self._call(lambda: self.meta.stat(name), f"cannot read {name}")
            if length == HEAD_SIZE or length <= size:
                data = self.get(name)
                return len(data), data[max(0, len(data) - size):]
            got = self._call(functools.partial(self.meta.read, name, size + 1, length - size), f"cannot read {name}")
            if len(got) == size:
                return length, got

    def append(self, name: str, data: bytes) -> None:
        """The RADOS append op, version-asserted: atomic and durable, sends only ``data``
        (append.py, which also says when the blob is replaced whole instead)."""
        self.faults.hit("backend.append")
        self._check_open()
        with self._lock:
            if self._appender is None:
                self._appender = BlobAppender(self._rados, lambda: self._open_io(self.prefix), self._call,
                                              self.blobs, self.get, self.put)
        self._appender.append(name, bytes(data))

    def delete(self, name: str) -> None:
        head = None
        try:
            if self.meta.stat(name)[0] == HEAD_SIZE:  # perhaps a striped blob's head: its stripes go too
                head = self.meta.read(name, HEAD_SIZE, 0)
            self._remove(self.meta, name)
        except self._rados.ObjectNotFound:
            pass
        except self._rados.Error as e:
            raise os_error(e, f"cannot delete {name}") from None
        self.blobs.deleted(name, head)

    def exists(self, name: str) -> bool:
        try:
            self.meta.stat(name)
            return True
        except self._rados.ObjectNotFound:
            return False
        except self._rados.Error as e:
            raise os_error(e, f"cannot stat {name}") from None

    def list_blobs(self, prefix: str = "") -> list[str]:
        rel = prefix.rstrip("/") + "/" if prefix.rstrip("/") else ""

        def names() -> list[str]:
            return sorted(o.key for o in self.meta.list_objects()
                          if o.key.startswith(rel) and "/" not in o.key[len(rel):])
        return self._call(names, f"cannot list {prefix or 'the pool'}")
