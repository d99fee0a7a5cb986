"""One exception hierarchy for the whole array.

Every error knows the errno it maps to when it surfaces through FUSE and the exit
code the CLI returns. The message is written for the user: it names the problem and,
where there is one, the next step.
"""

from __future__ import annotations

import errno as _errno


class VstorError(Exception):
    """Base class. Subclasses set ``errno`` and ``exit_code``."""

    errno: int = _errno.EIO
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(VstorError):
    """The request itself is malformed: a bad size, name or option."""

    errno = _errno.EINVAL
    exit_code = 2


class NotFound(VstorError):
    """A named pool, volume, key file or daemon does not exist."""

    errno = _errno.ENOENT
    exit_code = 3


class AlreadyExists(VstorError):
    """A name that must be unique is taken."""

    errno = _errno.EEXIST
    exit_code = 4


class Busy(VstorError):
    """The object is in use: a locked pool, an attached volume, a busy mount."""

    errno = _errno.EBUSY
    exit_code = 5


class NotRunning(VstorError):
    """The operation needs a running array daemon and there is none for the pool."""

    errno = _errno.ENOTCONN
    exit_code = 6


class KeyError_(VstorError):
    """The encryption key is missing or does not match the pool."""

    errno = _errno.EACCES
    exit_code = 7


class PoolFull(VstorError):
    """The pool has no space for new data. Data already acknowledged is untouched."""

    errno = _errno.ENOSPC
    exit_code = 8


class CorruptData(VstorError):
    """Stored bytes fail their checksum or authentication.

    Distinct from a torn journal tail, which is an expected result of a crash and is cut
    off silently at recovery: CorruptData means bytes that were once complete and
    verified no longer are.
    """

    errno = _errno.EIO
    exit_code = 9


class FormatError(VstorError):
    """An on-disk structure has the wrong magic, version or checksum."""

    errno = _errno.EIO
    exit_code = 10


class ReadOnly(VstorError):
    """A write was aimed at something that cannot change."""

    errno = _errno.EROFS
    exit_code = 11


class ExternalToolError(VstorError):
    """A system tool (losetup, fusermount3, ...) failed; its own message is included."""

    errno = _errno.EIO
    exit_code = 12


class MediaError(VstorError):
    """A tape or disc operation failed the way the device would report it (st, MMC); ``errno``
    is per instance: ENOSPC at the end of tape, EACCES when write-protected or WORM, ..."""

    exit_code = 13

    def __init__(self, message: str, err: int = _errno.EIO) -> None:
        super().__init__(message)
        self.errno = err


class TimedOut(VstorError):
    """The daemon did not answer within the client's time limit. The request may still run
    and complete: the message says how to check."""

    errno = _errno.ETIMEDOUT
    exit_code = 14


class Refused(VstorError):
    """Governance said no: an admin's one-time code is missing, wrong or replayed, the admin is
    rate-limited, or a compliance lock protects the object. The message says what is needed."""

    errno = _errno.EPERM
    exit_code = 15


class Unavailable(VstorError):
    """The pool's storage does not answer for now (a Ceph cluster past its client timeout). The
    request failed within that timeout; acknowledged data is untouched, and writes resume by
    themselves once the storage answers again."""

    errno = _errno.EIO
    exit_code = 17  # 16 is EXIT_PENDING (vstor/cli/common.py)


class WouldBlock(VstorError):
    """A read asked not to wait (``nowait``) needs data that is not in memory: the header
    cache or the page cache misses it, or the pool is remote. Never shown to a user: the
    caller serves the read later, or where waiting is fine (vstor/nbd/serving/conn.py)."""

    errno = _errno.EAGAIN
    exit_code = 18

    def __init__(self, message: str, started: bool = False) -> None:
        super().__init__(message)
        self.started = started  # the kernel was asked to read it meanwhile: a retry soon finds it


ERROR_TYPES: dict[str, type[VstorError]] = {
    cls.__name__: cls
    for cls in (
        VstorError, UsageError, NotFound, AlreadyExists, Busy, NotRunning, KeyError_,
        PoolFull, CorruptData, FormatError, ReadOnly, ExternalToolError, MediaError, TimedOut,
        Refused, Unavailable, WouldBlock,
    )
}


def error_from_wire(type_name: str, message: str) -> VstorError:
    """Rebuild an error sent over the control socket, keeping its class and exit code."""
    return ERROR_TYPES.get(type_name, VstorError)(message)
