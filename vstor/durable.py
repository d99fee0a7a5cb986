"""Durability helpers. Each docstring states the guarantee it gives.

Modelled on borg's platform/base.py (SyncFile, SaveFile, sync_dir).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat

SYNC_FILE_RANGE_WAIT_BEFORE, SYNC_FILE_RANGE_WRITE, SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4  # <linux/fs.h>
FALLOC_FL_KEEP_SIZE = 0x01  # <linux/falloc.h>
_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    _sync_file_range.restype = ctypes.c_int
_fallocate = getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int


def sync_dir(path: str) -> None:
    """Make the directory entries of ``path`` durable (a created, renamed or removed name).

    Filesystems that cannot fsync a directory (EINVAL) are tolerated.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing the dirty pages of [offset, offset+nbytes) of ``fd`` to disk, without
    waiting for them (``sync_file_range(SYNC_FILE_RANGE_WRITE)``).

    Guarantees nothing about durability: it is a head start, so that a later fdatasync has
    less left to wait for. Raises OSError if the kernel reports a write error (the caller
    must treat it like a failed fdatasync). A no-op where the call does not exist.
    """
    _sync_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)


def write_back(fd: int, offset: int, nbytes: int) -> None:
    """Write the dirty pages of [offset, offset+nbytes) of ``fd`` to disk and wait until
    they are written (``sync_file_range`` with WAIT_BEFORE, WRITE and WAIT_AFTER).

    Guarantees nothing about durability either: no metadata is written and the disk's
    cache is not flushed. It bounds how much of the range is still being written when it
    returns (nothing), so that another thread's fdatasync of the file, which waits for every
    page under writeback, does not wait for it. It may report and clear a write error of the
    file for ``fd``'s open file description: use a descriptor of its own (``os.open``, not
    ``os.dup``), so the file's other users still see the error. A no-op where the call does
    not exist.
    """
    _sync_range(fd, offset, nbytes, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER)


def _sync_range(fd: int, offset: int, nbytes: int, flags: int) -> None:
    if _sync_file_range is None or nbytes <= 0:
        return
    if _sync_file_range(fd, offset, nbytes, flags) != 0:
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ESPIPE):
            raise OSError(err, os.strerror(err))


def allocate_past_end(fd: int, offset: int, length: int) -> None:
    """Allocate the blocks of [offset, offset+length) of ``fd`` without changing the file's
    size (fallocate(2) with FALLOC_FL_KEEP_SIZE).

    After return, writes into that range need no new blocks: they cannot fail with ENOSPC
    for want of space (the blocks are unwritten extents until written). Guarantees nothing
    about durability. Raises OSError where the filesystem refuses (ENOSPC, EOPNOTSUPP), with
    no slow emulation as glibc's posix_fallocate does there. The journal keeps a new
    segment's size at its tail (journal/tailspace.py): with the end of the file at the
    segment's end, page faults in the mapped window read ahead into large folios of zeros,
    and a store into one dirties all of it (docs/benchmarks.md section 10)."""
    if _fallocate is None:
        raise OSError(errno.EOPNOTSUPP, "fallocate is not available")
    if _fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    After return, a crash leaves either the old or the new content, never a mix, and the
    new content survives power loss: tmp file + fsync + rename + fsync of the directory.

    The file gets ``mode`` (less the umask), never more: a ``.tmp`` left by a crash with wider
    permissions is narrowed before the data goes in.
    """
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        have = stat.S_IMODE(os.fstat(fd).st_mode)
        if have & ~mode:
            os.fchmod(fd, have & mode)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_dir(os.path.dirname(os.path.abspath(path)))


def remove_durably(path: str) -> None:
    """Delete ``path`` so that it stays deleted after a crash.

    The file is truncated first, as borg does, so a copy-on-write filesystem frees its
    blocks even if the unlink is lost.
    """
    with contextlib.suppress(FileNotFoundError):
        os.truncate(path, 0)
        os.unlink(path)
    sync_dir(os.path.dirname(os.path.abspath(path)))
