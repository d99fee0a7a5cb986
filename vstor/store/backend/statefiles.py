"""PoolFiles: the pool's small state files (positions, pairs, exports, governance, media
inventory), by relative name, over the backend's blobs.

Every module that keeps state in the pool takes a ``PoolFiles`` (usually the store's
``files``, narrowed with :meth:`PoolFiles.sub`) and a file name instead of a path, so the
same code keeps its state in the pool directory (``LocalBackend``: the files it always had,
byte for byte, each replaced with ``durable.atomic_write``, mode 0600) or as objects in the
pool's RADOS namespace (``RadosBackend``: one ``write_full`` each), and nothing above knows
which. The blob named ``meta/consumers.json`` is the file ``POOL/meta/consumers.json`` or the
RADOS object ``meta/consumers.json`` in namespace PREFIX (docs/formats.md, "Pool state files").

Guarantees: :meth:`write` is the backend's atomic, durable replace (a crash leaves the old or
the new bytes); :meth:`append` is durable on return (a log's append: a local file may keep a
torn tail after a crash, a RADOS object never does); :meth:`remove` is
durable and quiet when the file is missing; :meth:`read` returns None for a missing file and
raises the backend's OSError otherwise.
"""

from __future__ import annotations

import contextlib
import re

from vstor.store.backend.base import PoolBackend
from vstor.store.backend.local import LocalBackend

__all__ = ["STATE_FILES", "PoolFiles", "is_state_file", "local_files"]

STATE_FILES = tuple(re.compile(p) for p in (  # every state file's name (docs/formats.md, "Pool state files")
    r"meta/consumers\.json(\.copy)?", r"meta/last_check\.json", r"meta/compliance-clock\.json", r"meta/locks\.json",
    r"meta/nbd_exports\.json", r"meta/pairs/[^/]+\.(json|bitmap)",
    r"backup/(admins|approvals|keys|settings)\.json", r"backup/audit\.log", r"backup/clients/[^/]+\.key",
    r"media/[^/]+\.json", r"media/[^/]+/shelf/[^/.]+\.json", r"media/[^/]+/(shelf/)?[^/.]+\.side\d+\.json"))


class PoolFiles:
    """The files of a pool under one directory (``under``, "" for the pool's top)."""

    def __init__(self, backend: PoolBackend, under: str = "") -> None:
        self.backend = backend
        self.under = under.strip("/")

    def sub(self, directory: str) -> PoolFiles:
        """The files under ``directory`` (relative to this one)."""
        return PoolFiles(self.backend, self.blob(directory))

    def blob(self, name: str) -> str:
        """The backend's name of ``name`` (relative to the pool)."""
        return f"{self.under}/{name}" if self.under else name

    def where(self, name: str = "") -> str:
        """A file's full name for messages: its path on a local pool, rados://.../NAME on RADOS."""
        return self.backend.where(self.blob(name) if name else self.under)

    def read(self, name: str, private: bool = False) -> bytes | None:
        """A file's bytes, or None if there is none. ``private``: a secret's file, read with the
        backend's ``get_private`` (a local file that something made readable by others is made
        owner-only again, mode 0600, before it is read)."""
        blob = self.blob(name)
        try:
            return self.backend.get_private(blob) if private else self.backend.get(blob)
        except FileNotFoundError:
            return None

    def read_tail(self, name: str, size: int) -> tuple[int, bytes] | None:
        """A file's length and its last ``size`` bytes (one state of the file), or None if there
        is none: a log's writer finds its last entry without reading the log."""
        try:
            return self.backend.read_tail(self.blob(name), size)
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        """Replace a file atomically and durably (mode 0600 on a local pool)."""
        self.backend.put(self.blob(name), bytes(data))

    def append(self, name: str, data: bytes) -> None:
        """Add ``data`` at the end of a file (made, mode 0600, if missing), durably when it
        returns (``PoolBackend.append``). A local file is appended to as a log is (``O_APPEND``
        write, fsync: a crash may leave a torn tail, which the caller must recognise); on RADOS
        one atomic append op sends only ``data`` (a reader sees the file before or after it),
        and past the backend's blob size the file is replaced whole (rados/append.py)."""
        self.backend.append(self.blob(name), bytes(data))

    def create(self, name: str, data: bytes) -> None:
        """Create a file that must not exist yet; FileExistsError if it does."""
        self.backend.create(self.blob(name), bytes(data))

    def remove(self, name: str) -> None:
        """Delete a file durably; no error if it (or its directory) does not exist."""
        with contextlib.suppress(FileNotFoundError):  # a local file's directory that was never made
            self.backend.delete(self.blob(name))

    def exists(self, name: str) -> bool:
        return self.backend.exists(self.blob(name))

    def names(self, suffix: str = "") -> list[str]:
        """The names (without the directory) of the files directly under this one that end with
        ``suffix``, sorted."""
        start = len(self.under) + 1 if self.under else 0
        return [b[start:] for b in self.backend.list_blobs(self.under) if b.endswith(suffix)]


def local_files(directory: str) -> PoolFiles:
    """The files of a local directory (tools and tests that have a directory and no store)."""
    return PoolFiles(LocalBackend(directory))


def is_state_file(name: str) -> bool:
    """Whether the pool file ``name`` (relative, with "/") is a state file that goes through
    PoolFiles (so a copy of a pool, ``pool migrate``, puts it through the destination's backend)."""
    return any(p.fullmatch(name) for p in STATE_FILES)
