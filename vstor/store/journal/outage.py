"""Which backend failures suspend the journal instead of failing it, and what a suspended
journal tells the host. Pure: no I/O.

On a pool whose segments are local files, a failed write or fdatasync fails the journal for
good (the fsyncgate lesson: what reached the disk cannot be known). On a remote backend (RADOS)
an operation that timed out, or that the cluster refused because it is full, says nothing about
the pool's data: the journal is *suspended* (:class:`Outage`): appends and syncs fail at once
with EIO (``Unavailable``) or ENOSPC (``PoolFull``), and :meth:`Journal.resume` continues in a
new segment that seals the old one at its last durable position once the cluster answers
(docs/architecture.md, "Faults on RADOS"). Any other errno still fails the journal, and so does
a blocklisted client (ESHUTDOWN): a fenced owner must never write again.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass

from vstor.errors import PoolFull, Unavailable, VstorError

__all__ = ["FULL", "UNREACHABLE", "Outage", "classify", "outage_line"]

UNREACHABLE = "unreachable"
FULL = "full"
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_UNREACHABLE_ERRNOS = frozenset({errno.ETIMEDOUT, errno.EAGAIN, errno.ENOTCONN, errno.ECONNREFUSED,
                                 errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EINTR})


def classify(code: int | None) -> str | None:
    """FULL or UNREACHABLE for an errno that suspends a remote journal, None for one that fails it."""
    if code in _FULL_ERRNOS:
        return FULL
    if code in _UNREACHABLE_ERRNOS:
        return UNREACHABLE
    return None


@dataclass(frozen=True)
class Outage:
    """Why a remote journal is suspended, since when (``time.time()``), and what failed."""

    kind: str  # UNREACHABLE or FULL
    since: float
    why: str

    @classmethod
    def of(cls, kind: str, why: str, now: float | None = None) -> Outage:
        return cls(kind, time.time() if now is None else now, why)

    def error(self, where: str) -> VstorError:
        """The error an append or sync gets while the journal is suspended."""
        if self.kind == FULL:
            return PoolFull(f"the Ceph pool under {where} is full ({self.why}): writes fail with ENOSPC until "
                            "space is freed (raise the pool's quota, add OSDs or delete objects); they resume by "
                            "themselves, and acknowledged data is safe")
        return Unavailable(f"the Ceph cluster under {where} does not answer ({self.why}): writes fail with EIO "
                           "until it does; they resume by themselves, and acknowledged data is safe")

    def describe(self) -> dict:
        return {"kind": self.kind, "since": self.since, "why": self.why}


def outage_line(info: dict, now: float | None = None) -> str:
    """One line for the status (from :meth:`Outage.describe`): what the host sees, what to do."""
    ago = max(0.0, (time.time() if now is None else now) - info["since"])
    if info["kind"] == FULL:
        return (f"Ceph pool FULL for {ago:.0f} s ({info['why']}): writes and fsyncs get ENOSPC; raise the pool's "
                "quota ('ceph osd pool set-quota POOL max_bytes N'), add capacity or delete volumes; writes "
                "resume by themselves")
    return (f"Ceph cluster UNREACHABLE for {ago:.0f} s ({info['why']}): writes and fsyncs get EIO, and reads "
            "that need the cluster get EIO within the client timeout; writes resume by themselves once it answers")
