"""The interface every pool backend implements: journal segments and named blobs.

A pool keeps two kinds of storage objects:

* **Segments**, numbered, append-only (journal segments): exclusive create with a header,
  writes at the tail (which may complete asynchronously), a flush that makes every earlier
  write durable, reads of byte ranges, truncation (recovery cuts a torn tail), deletion and
  listing.
* **Blobs**, named by a relative path such as ``pool.json`` or ``meta/checkpoint.a``
  (superblock, checkpoints, metadata files): read whole, replaced atomically and durably,
  created exclusively, deleted, listed by prefix.

Errors: every I/O failure is a builtin ``OSError`` with its errno (ENOSPC when the backend is
full, ETIMEDOUT when a remote backend does not answer within its timeout, EIO otherwise),
so the callers' existing handling (journal.py: ENOSPC -> PoolFull, anything else -> failed
journal; on a backend without local files ETIMEDOUT, ENOSPC and EDQUOT suspend the journal
instead, journal/outage.py) applies to every backend. A missing blob is ``FileNotFoundError``; an exclusive
create of an existing one is ``FileExistsError``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from vstor.store.backend.files import FileArea, LocalFiles

__all__ = ["PoolBackend"]


class PoolBackend(ABC):
    """Storage for one pool. Implementations are safe to call from several threads."""

    kind: str = ""
    # Journal appends of at least ALIGN_FROM bytes are followed by padding up to a multiple of
    # this (0: none). RADOS: BlueStore reads and rewrites a block an earlier write left partly
    # written (a deferred write through its WAL), so a 1 MiB record at an unaligned offset cost
    # the OSD 15-25% more CPU per MiB than one that starts on a 4 KiB boundary.
    append_alignment: int = 0

    @abstractmethod
    def describe(self) -> str:
        """Where the pool lives, for messages (a directory, or rados://POOL/PREFIX)."""

    def where(self, name: str) -> str:
        """A blob's full name, for messages (its path on a local pool)."""
        return f"{self.describe()}/{name}"

    # -- segments --------------------------------------------------------------------------
    def local_path(self, segno: int) -> str | None:
        """The segment's local file, which the journal may map and fdatasync itself (local
        backend), or None when segments are not local files."""
        return None

    @abstractmethod
    def list_segments(self) -> list[int]:
        """The numbers of every segment, ascending."""

    @abstractmethod
    def create_segment(self, segno: int, header: bytes) -> None:
        """Create segment ``segno`` holding ``header``; durable on return. FileExistsError if it exists."""

    @abstractmethod
    def write_segment(self, segno: int, pos: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``pos`` of a segment. It may still be in flight on return (the
        caller may reuse ``data`` at once): :meth:`flush_segment` waits for it and reports
        its failure. Reads after the return see it."""

    @abstractmethod
    def flush_segment(self, segno: int) -> None:
        """Make every write to ``segno`` issued before the call durable; OSError if any failed."""

    @abstractmethod
    def read_segment(self, segno: int, pos: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``pos`` (fewer at the end). FileNotFoundError if no such segment."""

    @abstractmethod
    def segment_size(self, segno: int) -> int:
        """The bytes in a segment (0 when it does not exist)."""

    @abstractmethod
    def truncate_segment(self, segno: int, size: int) -> None:
        """Cut a segment to ``size`` bytes, durably."""

    @abstractmethod
    def delete_segment(self, segno: int) -> None:
        """Delete a segment durably; no error if it does not exist."""

    # -- blobs -----------------------------------------------------------------------------
    @abstractmethod
    def get(self, name: str) -> bytes:
        """A blob's whole content. FileNotFoundError if there is none."""

    @abstractmethod
    def put(self, name: str, data: bytes) -> None:
        """Replace a blob atomically and durably: a crash leaves the old or the new content."""

    @abstractmethod
    def create(self, name: str, data: bytes) -> None:
        """Create a blob that must not exist yet (durable). FileExistsError if it does."""

    def append(self, name: str, data: bytes) -> None:
        """Add ``data`` at the end of a blob (made if missing), durably when it returns. This
        default replaces the whole content atomically (the blob stays under the backend's blob
        size); a local file is appended to as a log is (LocalBackend)."""
        try:
            old = self.get(name)
        except FileNotFoundError:
            old = b""
        self.put(name, old + bytes(data))

    def read_tail(self, name: str, size: int) -> tuple[int, bytes]:
        """A blob's length and its last ``size`` bytes (all of it when shorter), both of one
        state of the blob: a log's writer finds its last entry without reading the log.
        FileNotFoundError if there is none. This default reads the whole blob."""
        data = self.get(name)
        return len(data), data[max(0, len(data) - size):]

    def get_private(self, name: str) -> bytes:
        """A blob's whole content, as :meth:`get`, for a blob that only the pool's owner may
        read (a secret: the admins' TOTP seeds). A backend whose blobs have access modes makes
        one that others may read owner-only again before it reads it (LocalBackend: mode 0600).
        This default is :meth:`get`: the blobs have no modes of their own (on RADOS, the Ceph
        users' capabilities on the pool decide who reads them)."""
        return self.get(name)

    @abstractmethod
    def delete(self, name: str) -> None:
        """Delete a blob durably; no error if it does not exist."""

    @abstractmethod
    def exists(self, name: str) -> bool:
        """Whether a blob exists."""

    @abstractmethod
    def list_blobs(self, prefix: str = "") -> list[str]:
        """The names of the blobs under ``prefix`` (a directory such as ``meta/``), sorted."""

    @abstractmethod
    def close(self) -> None:
        """Release connections and descriptors (writes not flushed are not guaranteed)."""

    def __enter__(self) -> PoolBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- large files (added for issue 29: tape cartridges) -----------------------------------
    def file_area(self, area: str, local_dir: str) -> FileArea:
        """The pool's large files of ``area`` (``media``: tape cartridges): files under
        ``local_dir`` for a local pool (as they always were), striped objects on RADOS."""
        return LocalFiles(local_dir)

    def sparse_file_area(self, area: str, local_dir: str) -> FileArea:
        """The pool's sparse files of ``area`` (``optical``: disc images), whose unwritten ranges
        read as zeros and take no space: files under ``local_dir`` for a local pool (sparse
        files, as they always were), only the written stripes on RADOS (rados/sparse.py). Keep
        the area names of :meth:`file_area` and of this method apart."""
        return LocalFiles(local_dir)

    # -- spare segment files (local pools; spares.py) -----------------------------------------
    def spare_segments(self) -> tuple[int, int]:
        """Dead segment files kept for reuse by later segments: (count, bytes). None here."""
        return 0, 0

    def release_spares(self) -> int:
        """Give the space of every spare segment file back (the pool is short of space); how many."""
        return 0

    def purge_deleted(self) -> int:
        """Free the storage of the segments :meth:`delete_segment` unlisted but left to be
        removed (local pools: spares.py; slow, so the store calls it without its lock); how
        many. RADOS removes its stripes on a thread of its own (remover.py): none here."""
        return 0

    # -- outages (remote backends; journal/resume.py) ----------------------------------------
    def abandon_segment(self, segno: int) -> None:
        """Forget the writes to ``segno`` still in flight and their failures (waiting for each
        to end, within the client timeout): the journal has sealed the segment before them."""
        return None

    def check_owner(self) -> None:
        """Raise OSError unless this process still owns the pool now (ESHUTDOWN: it was fenced
        or lost its lock, for good; another errno: the storage did not answer), for writes that
        do not go through this backend and so are not fenced by it (the backup catalog's
        commits on RADOS). This default checks nothing: a local pool's flock cannot be taken
        from a live process."""
        return None

    def probe(self) -> None:
        """Raise OSError unless the storage answers and takes a small write now (ETIMEDOUT
        when it does not answer, ENOSPC or EDQUOT when it is full)."""
        return None
