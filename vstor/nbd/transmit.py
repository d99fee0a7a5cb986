"""Transmission-phase rules: which request gets which error, and block status extents. Pure.

:func:`check` says whether a request may run on a session (the connection sends the error
reply when it may not); :func:`allocation_extents` turns the mapped ranges of a volume into
``base:allocation`` extents.
"""

from __future__ import annotations

from vstor.nbd import proto as P
from vstor.nbd.negotiate import Session

# The command flags each command accepts (FUA on all of them, as the protocol asks of a
# server that advertises SEND_FUA).
_ALLOWED = {
    P.CMD_READ: P.CMDF_FUA | P.CMDF_DF,
    P.CMD_WRITE: P.CMDF_FUA,
    P.CMD_FLUSH: P.CMDF_FUA,
    P.CMD_TRIM: P.CMDF_FUA,
    P.CMD_CACHE: P.CMDF_FUA,
    P.CMD_WRITE_ZEROES: P.CMDF_FUA | P.CMDF_NO_HOLE | P.CMDF_FAST_ZERO,
    P.CMD_BLOCK_STATUS: P.CMDF_FUA | P.CMDF_REQ_ONE,
}
WRITING = frozenset({P.CMD_WRITE, P.CMD_TRIM, P.CMD_WRITE_ZEROES})


def check(cmd: int, flags: int, offset: int, length: int, session: Session) -> tuple[int, str]:
    """(0, "") if the request may run, else (NBD error, message)."""
    allowed = _ALLOWED.get(cmd)
    if allowed is None:
        return P.EINVAL, f"unknown command {cmd}"
    if not session.structured:
        allowed &= ~P.CMDF_DF
    if session.export.read_only:
        allowed &= ~P.CMDF_FAST_ZERO
    if flags & ~allowed:
        return P.EINVAL, f"flags {flags & ~allowed:#x} are not valid on {P.CMD_NAMES[cmd]}"
    if cmd in WRITING and session.export.read_only:
        return P.EPERM, f"export {session.export.name!r} is read-only"
    if cmd == P.CMD_FLUSH:
        return 0, ""
    size = session.export.size
    if cmd == P.CMD_BLOCK_STATUS and not session.base_allocation:
        return P.EINVAL, "no meta context selected: SET_META_CONTEXT base:allocation first"
    if length == 0 and cmd in (P.CMD_READ, P.CMD_BLOCK_STATUS):
        return P.EINVAL, "zero-length request"
    if offset + length > size:
        err = P.ENOSPC if cmd in (P.CMD_WRITE, P.CMD_WRITE_ZEROES) else P.EINVAL
        return err, f"{length} bytes at offset {offset} run past the end of the export ({size} bytes)"
    if length > P.MAX_PAYLOAD and cmd == P.CMD_READ:
        return (P.EOVERFLOW if flags & P.CMDF_DF else P.EINVAL), f"read of {length} bytes over the maximum " \
            f"{P.MAX_PAYLOAD}"
    return 0, ""


def allocation_extents(offset: int, length: int, mapped: list[tuple[int, int]], req_one: bool = False,
                       limit: int = P.MAX_EXTENTS) -> list[tuple[int, int]]:
    """(length, flags) extents covering [offset, offset+length) from the sorted, merged mapped
    ranges within it: mapped data is 0, the rest ``STATE_HOLE | STATE_ZERO`` (vstor stores no
    zeros: unmapped ranges read as zeros and hold no space). At most ``limit`` extents (1 with
    ``req_one``); the last one then ends early, which the protocol allows."""
    out: list[tuple[int, int]] = []
    hole = P.STATE_HOLE | P.STATE_ZERO
    at, end = offset, offset + length
    cap = 1 if req_one else limit
    for s, e in mapped:
        s, e = max(s, at), min(e, end)
        if e <= s:
            continue
        if s > at:
            out.append((s - at, hole))
            if len(out) >= cap:
                return out
        out.append((e - s, 0))
        at = e
        if len(out) >= cap:
            return out
    if at < end:
        out.append((end - at, hole))
    return out
