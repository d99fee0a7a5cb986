"""Large byte files of a pool that are not journal segments: tape cartridges and disc images.

``FileArea`` is a flat namespace of files named by relative paths (``LIB/BARCODE.tape``),
with positional reads and writes, like the files of a directory. ``LocalFiles`` is today's
layout: ordinary files under a directory, written with ``pwrite`` and made durable with
``fdatasync``/``fsync``, byte for byte what vstor always wrote. The RADOS implementation
(``rados.files.RadosFiles``) stripes each file over objects; a pool's backend hands out the
area of its kind (:meth:`PoolBackend.file_area <vstor.store.backend.base.PoolBackend.file_area>`).

Contract of an open :class:`AreaFile` (the cartridge relies on exactly this):

* ``pwrite`` may still be in flight when it returns (the caller may reuse its buffer); a read
  issued after it sees it; ``sync`` makes every earlier write durable and raises the first
  failure (OSError with its errno);
* ``truncate`` cuts or extends the file (durable only after ``sync``);
* ``close`` is ``sync`` then release.

Errors are builtin OSError with their errno, as base.py says for the backends.
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod

from vstor.durable import remove_durably

__all__ = ["DISC_AREA", "MEDIA_AREA", "AreaFile", "FileArea", "LocalFile", "LocalFiles"]

# The pool's file areas (their names are the RADOS namespaces PREFIX/AREA, docs/formats.md):
MEDIA_AREA = "media"  # tape cartridges (PoolBackend.file_area)
DISC_AREA = "optical"  # optical disc images (PoolBackend.sparse_file_area)


class AreaFile(ABC):
    """One open file of an area."""

    created: bool = False  # this open created it

    @abstractmethod
    def pread(self, size: int, pos: int) -> bytes:
        """Up to ``size`` bytes from ``pos`` (fewer at the end of the file)."""

    @abstractmethod
    def pwrite(self, data: bytes | memoryview, pos: int) -> None:
        """Write ``data`` at ``pos`` (it may be in flight on return)."""

    @abstractmethod
    def size(self) -> int:
        """The file's length in bytes, counting writes in flight."""

    @abstractmethod
    def truncate(self, size: int) -> None:
        """Cut (or extend with zeros) the file to ``size`` bytes."""

    @abstractmethod
    def sync(self, metadata: bool = False) -> None:
        """Make every earlier write durable (``metadata``: fsync rather than fdatasync on a local file)."""

    @abstractmethod
    def close(self) -> None:
        """``sync(metadata=True)`` and release; closing twice is harmless."""


class FileArea(ABC):
    """Files named by relative paths ('/'-separated, no '..')."""

    kind: str = ""

    @abstractmethod
    def describe(self, name: str) -> str:
        """Where a file is, for messages (a path, or rados://POOL/PREFIX/AREA/NAME)."""

    @abstractmethod
    def open(self, name: str, create: bool = False) -> AreaFile:
        """Open a file for reading and writing; FileNotFoundError if it does not exist and not ``create``."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def size(self, name: str) -> int:
        """A closed file's length; FileNotFoundError if there is none."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove a file durably; no error if it does not exist."""

    @abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Move a file to another name (replacing ``dst``)."""

    @abstractmethod
    def listdir(self, directory: str) -> list[str]:
        """The base names of the files directly in ``directory`` ('' for the top), sorted."""

    @abstractmethod
    def remove_tree(self, directory: str) -> None:
        """Remove every file under ``directory``."""

    def makedirs(self, directory: str) -> None:
        """Make ``directory`` exist (areas without directories need nothing)."""
        return None

    def allocated(self, name: str) -> int:
        """The bytes a closed file takes in the area (its length unless the area is sparse);
        FileNotFoundError if there is none."""
        return self.size(name)


class LocalFile(AreaFile):
    def __init__(self, path: str, create: bool) -> None:
        self.path = path
        self.created = create and not os.path.exists(path)
        self.fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)

    def pread(self, size: int, pos: int) -> bytes:
        return os.pread(self.fd, size, pos)

    def pwrite(self, data: bytes | memoryview, pos: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, pos)
            view, pos = view[n:], pos + n

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def sync(self, metadata: bool = False) -> None:
        (os.fsync if metadata else os.fdatasync)(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1


class LocalFiles(FileArea):
    """Files under ``root`` (mode 0600; directories 0700). ``root`` '' takes names as paths."""

    kind = "local"

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, name: str) -> str:
        if ".." in name.split("/"):
            raise ValueError(f"bad file name {name!r}")
        return os.path.join(self.root, name) if self.root else name

    def describe(self, name: str) -> str:
        return self.path(name)

    def open(self, name: str, create: bool = False) -> LocalFile:
        return LocalFile(self.path(name), create)

    def exists(self, name: str) -> bool:
        return os.path.exists(self.path(name))

    def size(self, name: str) -> int:
        return os.path.getsize(self.path(name))

    def delete(self, name: str) -> None:
        remove_durably(self.path(name))

    def rename(self, src: str, dst: str) -> None:
        os.replace(self.path(src), self.path(dst))

    def listdir(self, directory: str) -> list[str]:
        d = self.path(directory) if directory else self.root
        try:
            return sorted(f for f in os.listdir(d) if os.path.isfile(os.path.join(d, f)))
        except FileNotFoundError:
            return []

    def remove_tree(self, directory: str) -> None:
        shutil.rmtree(self.path(directory), ignore_errors=True)

    def makedirs(self, directory: str) -> None:
        os.makedirs(self.path(directory), mode=0o700, exist_ok=True)

    def allocated(self, name: str) -> int:
        return os.stat(self.path(name)).st_blocks * 512
