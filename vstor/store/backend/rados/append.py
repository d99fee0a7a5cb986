"""Appending to a blob of a RADOS pool with the RADOS append op (``RadosBackend.append``).

A pool state file that is a log (the backup audit log, vstor/backup/audit.py) grows by one
entry at a time. Replacing the whole object for each entry (``write_full``, the default
``PoolBackend.append``) sends the whole log for every entry; the append op sends the entry.

Guarantees of :meth:`BlobAppender.append`:

* **Atomic.** One write operation ``[assert_version V, append DATA]``: the OSD applies it
  whole or not at all, so a reader (one read operation, ``RadosBackend.get``) sees the blob
  before or after the append, never part of it. If the object changed after it was sized
  (its version is no longer V), nothing is written and the append starts over, at most
  APPEND_TRIES times.
* **Durable when it returns.** A synchronous write operation completes when every replica of
  the object has it, as ``write_full`` does. It carries FULL_TRY (a full pool answers ENOSPC).
* **Fenced.** It goes through the backend's ``_call``: a blocklisted client's append fails
  with ESHUTDOWN, and ``FencedBackend`` trips on it as on any write.

Forms (docs/formats.md, "Pool state files"): the plain object is appended to while the
result stays within ``max_blob`` (64 MiB: ``get`` and ``put`` still move it in one operation,
and it stays under the OSD's ``osd_max_object_size``, 128 MiB by default). Past that, or when
the blob is already in the striped form (blob.py: a head and stripes, whose checksum
covers the whole content), the whole content is replaced in the striped form, atomically as
any replace: the log never stops, but each entry past ``max_blob`` costs a rewrite of the
log. An OSD whose ``osd_max_object_size`` is below ``max_blob`` refuses the append with EFBIG;
the blob then moves to the striped form the same way (its stripes are at most 4 MiB), and a
warning says so once. A missing or tiny object (under the head magic's 8 bytes) is replaced whole
too (``put``, which stripes content that starts with the magic), so a plain blob never starts
with the striped head's magic.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from typing import Any

from vstor.store.backend.rados.blob import HEAD_MAGIC, HEAD_SIZE, StripedBlobs
from vstor.store.backend.rados.errors import FULL_TRY

__all__ = ["APPEND_TRIES", "BlobAppender"]

APPEND_TRIES = 8  # version-asserted attempts before an append gives up (the blob kept changing)
_RACED = (errno.ERANGE, errno.EOVERFLOW)  # assert_version failed: the object changed after its stat

log = logging.getLogger(__name__)


class BlobAppender:
    """Appends to the blobs of one RADOS namespace. ``open_io()`` opens an I/O context of that
    namespace (this one is used only here, under a lock, so the version read after a ``stat``
    is that object's); ``call(fn, what)`` runs a librados call, its error as an OSError
    (RadosBackend._call, FencedBackend's included); ``get``/``put`` are the backend's."""

    def __init__(self, rados: Any, open_io: Callable[[], Any], call: Callable[[Callable[[], Any], str], Any],
                 blobs: StripedBlobs, get: Callable[[str], bytes], put: Callable[[str, bytes], None]) -> None:
        self._rados, self._open_io, self._call = rados, open_io, call
        self.blobs, self._get, self._put = blobs, get, put
        self._lock = threading.Lock()
        self._io: Any = None
        self._closed = False
        self._warned: set[str] = set()

    def append(self, name: str, data: bytes) -> None:
        data = bytes(data)
        with self._lock:
            if self._closed:
                raise OSError(errno.EBADF, f"cannot append to {name}: the RADOS backend is closed (used after close)")
            if self._io is None:
                self._io = self._open_io()
            for _ in range(APPEND_TRIES):
                kind, size, version = self._size(name)
                if kind == "striped":
                    self.blobs.put(name, self._get(name) + data)  # stays striped
                    return
                if kind in ("missing", "tiny") or size + len(data) > self.blobs.max_blob:
                    self._rewrite(name, data)
                    return
                try:
                    self._append_op(name, data, version)
                    return
                except OSError as e:
                    if e.errno in _RACED:
                        continue
                    if e.errno != errno.EFBIG:
                        raise
                self._to_striped(name, data, self._get(name))
                return
        raise OSError(errno.EAGAIN, f"cannot append to {name}: it changed under every one of {APPEND_TRIES} "
                      "attempts (is another vstor writing this pool?)")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._io is not None:
                self._io.close()
                self._io = None

    # -- steps ---------------------------------------------------------------------------------
    def _size(self, name: str) -> tuple[str, int, int | None]:
        """(kind, size, version) of the object ``name``: kind "missing" (0, None), "plain",
        "striped" (a striped blob's head) or "tiny" (under len(HEAD_MAGIC) bytes: replaced whole,
        so that no plain blob ever starts with the head's magic)."""
        io, rados = self._io, self._rados

        def stat() -> tuple[str, int, int | None]:
            try:
                size, _mtime = io.stat(name)
            except rados.ObjectNotFound:
                return "missing", 0, None
            version = io.get_last_version()
            if size < len(HEAD_MAGIC):
                return "tiny", size, version
            if size == HEAD_SIZE and StripedBlobs.is_head(io.read(name, len(HEAD_MAGIC), 0)):
                return "striped", size, version
            return "plain", size, version
        return self._call(stat, f"cannot append to {name}")

    def _append_op(self, name: str, data: bytes, version: int | None) -> None:
        rados, io = self._rados, self._io
        with rados.WriteOpCtx() as op:
            op.assert_version(version)
            op.append(data)
            self._call(lambda: io.operate_write_op(op, name, flags=FULL_TRY), f"cannot append to {name}")

    def _rewrite(self, name: str, data: bytes) -> None:
        """Replace the whole content (PoolBackend.append's way): the striped form past max_blob."""
        try:
            old = self._get(name)
        except FileNotFoundError:
            old = b""
        try:
            self._put(name, old + data)
        except OSError as e:
            if e.errno != errno.EFBIG:
                raise
            self._to_striped(name, data, old)

    def _to_striped(self, name: str, data: bytes, old: bytes) -> None:
        """The OSD refused the plain object's growth (EFBIG: its osd_max_object_size): the
        content goes to the striped form, where it stays."""
        try:
            self.blobs.put(name, old + data)
        except OSError as e:
            if e.errno != errno.EFBIG:
                raise
            raise OSError(errno.EFBIG, f"cannot append to {name}: the cluster's osd_max_object_size is below the "
                          f"{self.blobs.stripe} bytes of a stripe; raise it (ceph config set osd "
                          "osd_max_object_size 128M, Ceph's default)") from None
        if name not in self._warned:
            self._warned.add(name)
            log.warning("%s: the OSD refuses an object of %d bytes (osd_max_object_size); it is kept striped from "
                        "now on, and each append rewrites it", name, len(old) + len(data))
