"""LocalBackend: a pool in a directory of ordinary files, the layout vstor always had.

Segments are ``DIR/journal/NNNNNNNNNN.seg``; a deleted segment's file may be kept in
``DIR/journal/spare/`` and reused for a later segment (spares.py); a blob named ``meta/checkpoint.a`` is the file
``DIR/meta/checkpoint.a``. Guarantees: ``put`` is ``durable.atomic_write`` (tmp file, fsync,
rename, fsync of the directory); a created or deleted segment's directory entry is synced;
``flush_segment`` is one fdatasync of the segment. Writes are synchronous ``pwrite`` calls,
so an error is raised by :meth:`write_segment` itself.

Fault points (vstor/faults.py): ``backend.write``, ``backend.flush``, ``backend.put``,
``backend.append`` (RadosBackend's too).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading

from vstor.durable import atomic_write, remove_durably, sync_dir
from vstor.faults import NO_FAULTS, Faults
from vstor.store.backend.base import PoolBackend
from vstor.store.backend.spares import MAX_SPARES, SpareSegments
from vstor.store.journal.format import SEGMENT_HEADER_SIZE, segment_name

__all__ = ["LocalBackend"]

JOURNAL_DIR = "journal"


class LocalBackend(PoolBackend):
    kind = "local"

    def __init__(self, root: str, faults: Faults = NO_FAULTS, journal_dir: str | None = None,
                 max_spares: int = MAX_SPARES) -> None:
        self.root = root
        self.journal_dir = journal_dir or os.path.join(root, JOURNAL_DIR)
        self.faults = faults
        self.spares = SpareSegments(self.journal_dir, max_spares, faults)
        self._lock = threading.Lock()
        self._fds: dict[int, int] = {}  # segno -> O_RDWR descriptor

    def describe(self) -> str:
        return self.root

    # -- segments --------------------------------------------------------------------------
    def segment_path(self, segno: int) -> str:
        return os.path.join(self.journal_dir, segment_name(segno))

    def local_path(self, segno: int) -> str:
        return self.segment_path(segno)

    def list_segments(self) -> list[int]:
        try:
            names = os.listdir(self.journal_dir)
        except FileNotFoundError:
            return []
        return sorted(int(n[:-4]) for n in names if n.endswith(".seg") and n[:-4].isdigit())

    def create_segment(self, segno: int, header: bytes) -> None:
        path = self.segment_path(segno)
        # an earlier segment's file, whose blocks are written; not for a copy that brings no
        # header of its own (pool migrate's empty segments)
        if len(header) == SEGMENT_HEADER_SIZE and self.spares.take(path, header):
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.pwrite(fd, header, 0)
            os.fdatasync(fd)
            sync_dir(os.path.dirname(path))
        except BaseException:  # remove the half-made file, or an exclusive retry could never succeed
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        os.close(fd)  # writers open it again (the journal maps its own descriptor)

    def _fd(self, segno: int) -> int:
        with self._lock:
            fd = self._fds.get(segno)
        if fd is not None:
            return fd
        fd = os.open(self.segment_path(segno), os.O_RDWR)
        with self._lock:
            have = self._fds.setdefault(segno, fd)
        if have != fd:
            os.close(fd)
        return have

    def write_segment(self, segno: int, pos: int, data: bytes | memoryview) -> None:
        self.faults.hit("backend.write")
        view = memoryview(data)
        fd = self._fd(segno)
        while view:
            n = os.pwrite(fd, view, pos)
            view, pos = view[n:], pos + n

    def flush_segment(self, segno: int) -> None:
        self.faults.hit("backend.flush")
        os.fdatasync(self._fd(segno))

    def read_segment(self, segno: int, pos: int, size: int) -> bytes:
        return os.pread(self._fd(segno), size, pos)

    def segment_size(self, segno: int) -> int:
        try:
            return os.stat(self.segment_path(segno)).st_size
        except FileNotFoundError:
            return 0

    def truncate_segment(self, segno: int, size: int) -> None:
        with self._lock:
            cached = self._fds.get(segno)
        # Recovery cuts one segment per open: a descriptor of its own, not one kept until GC.
        fd = cached if cached is not None else os.open(self.segment_path(segno), os.O_RDWR)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            if cached is None:
                os.close(fd)

    def delete_segment(self, segno: int) -> None:
        with self._lock:
            fd = self._fds.pop(segno, None)
        if fd is not None:
            os.close(fd)
        self.spares.keep(self.segment_path(segno), segno)

    def spare_segments(self) -> tuple[int, int]:
        return self.spares.summary()

    def release_spares(self) -> int:
        return self.spares.release()

    def purge_deleted(self) -> int:
        return self.spares.purge()

    # -- blobs -----------------------------------------------------------------------------
    def _path(self, name: str) -> str:
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"bad blob name {name!r}")
        return os.path.join(self.root, name)

    def where(self, name: str) -> str:
        return self._path(name)

    def get(self, name: str) -> bytes:
        with open(self._path(name), "rb") as f:
            return f.read()

    def read_tail(self, name: str, size: int) -> tuple[int, bytes]:
        with open(self._path(name), "rb") as f:
            length = os.fstat(f.fileno()).st_size
            return length, os.pread(f.fileno(), size, max(0, length - size))

    def get_private(self, name: str) -> bytes:
        """The file's bytes, after making it owner-only (0600) if something widened its mode."""
        with open(self._path(name), "rb") as f:
            if stat.S_IMODE(os.fstat(f.fileno()).st_mode) & 0o077:
                os.fchmod(f.fileno(), 0o600)
            return f.read()

    def put(self, name: str, data: bytes) -> None:
        self.faults.hit("backend.put")
        path = self._path(name)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        atomic_write(path, data, 0o600)

    def create(self, name: str, data: bytes) -> None:
        path = self._path(name)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        _write_durably(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), data)
        sync_dir(os.path.dirname(path))

    def append(self, name: str, data: bytes) -> None:
        """An ``O_APPEND`` write and fsync, as a log is appended to: a crash may leave a torn
        tail, which the caller must recognise."""
        self.faults.hit("backend.append")
        path = self._path(name)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        _write_durably(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), data)

    def delete(self, name: str) -> None:
        remove_durably(self._path(name))

    def exists(self, name: str) -> bool:
        return os.path.exists(self._path(name))

    def list_blobs(self, prefix: str = "") -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix.rstrip("/") else self.root
        if not os.path.isdir(base):
            return []
        rel = prefix.rstrip("/") + "/" if prefix.rstrip("/") else ""
        return sorted(rel + n for n in os.listdir(base)
                      if os.path.isfile(os.path.join(base, n)) and not n.endswith(".tmp"))

    def close(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)


def _write_durably(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, fsync it and close it."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
