"""The pool owner's lock on RADOS, as bytes: the cls_lock calls python3-rados lacks, and the
holder record (pure: no rados import, no sockets).

python3-rados 16 offers ``lock_exclusive`` and ``unlock`` but neither ``break_lock`` nor a way
to set the holder's record in the same operation as the lock, and its ``lock_exclusive`` leaves
the microseconds of the duration uninitialised (the lock then lives up to 4.3 s longer than
asked), so the lock, its renewals and its break are all calls of the OSD class
``lock`` (``Ioctx.execute`` / ``WriteOp.execute``), whose inputs are Ceph's encoding of
``cls_lock_lock_op``, ``cls_lock_break_op`` and ``cls_lock_assert_op`` (src/cls/lock/cls_lock_ops.h): a versioned
struct (u8 version 1, u8 compat 1, le32 length of the rest), strings as le32 length + bytes,
``entity_name_t`` as u8 type + le64 number, ``utime_t`` as le32 seconds + le32 nanoseconds.

The holder record (xattr ``HOLDER_XATTR`` of the lock object, written in the same write
operation that takes the lock) says who holds it and how to fence it: its RADOS client
(``client.GLOBALID``) and addresses. Format in docs/formats.md ("Pools on RADOS").
"""

from __future__ import annotations

import json
import struct

from vstor import checkedjson

__all__ = ["ENTITY_CLIENT", "FLAG_MUST_RENEW", "HOLDER_FORMAT", "HOLDER_VERSION", "LOCK_EXCLUSIVE",
           "client_name", "encode_assert_op", "encode_break_op", "encode_lock_op", "holder_addrs", "pack_holder",
           "unpack_holder"]

LOCK_EXCLUSIVE = 1  # ClsLockType
FLAG_MUST_RENEW = 2  # LOCK_FLAG_MUST_RENEW: a renewal fails (ENOENT) unless the caller still holds the lock
ENTITY_CLIENT = 0x08  # CEPH_ENTITY_TYPE_CLIENT
HOLDER_FORMAT = "vstor-holder"
HOLDER_VERSION = 1


def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<I", len(raw)) + raw


def _struct(body: bytes) -> bytes:
    """ENCODE_START(1, 1) ... ENCODE_FINISH around ``body``."""
    return struct.pack("<BBI", 1, 1, len(body)) + body


def encode_lock_op(name: str, cookie: str, description: str, duration: int, flags: int = 0,
                   tag: str = "") -> bytes:
    """The input of ``lock.lock``: an exclusive lock ``name`` held for ``duration`` seconds."""
    return _struct(_string(name) + struct.pack("<B", LOCK_EXCLUSIVE) + _string(cookie) + _string(tag)
                   + _string(description) + struct.pack("<IIB", duration, 0, flags))


def encode_break_op(name: str, client_id: int, cookie: str) -> bytes:
    """The input of ``lock.break_lock``: remove the locker (client.``client_id``, ``cookie``)."""
    return _struct(_string(name) + struct.pack("<Bq", ENTITY_CLIENT, client_id) + _string(cookie))


def encode_assert_op(name: str, cookie: str, tag: str = "") -> bytes:
    """The input of ``lock.assert_locked`` (``cls_lock_assert_op``): it succeeds only if the
    calling client holds the exclusive lock ``name`` with ``cookie`` now (an expired locker is
    dropped first), else EBUSY."""
    return _struct(_string(name) + struct.pack("<B", LOCK_EXCLUSIVE) + _string(cookie) + _string(tag))


def client_name(client_id: int) -> str:
    return f"client.{client_id}"


def holder_addrs(get_addrs: str) -> list[str]:
    """The addresses of ``Rados.get_addrs()`` ("v2:IP:0/NONCE" or "[v2:...,v1:...]"), as the
    ``IP:PORT/NONCE`` strings ``osd blocklist add`` takes (the monitor ignores the type)."""
    out = []
    for part in get_addrs.strip().strip("[]").split(","):
        part = part.strip()
        for kind in ("v1:", "v2:", "any:"):
            if part.startswith(kind):
                part = part[len(kind):]
        if part and part not in out:
            out.append(part)
    return out


def pack_holder(desc: str, cookie: str, client_id: int, addrs: list[str], host: str, pid: int,
                taken: float) -> bytes:
    doc = {"format": HOLDER_FORMAT, "version": HOLDER_VERSION, "desc": desc, "cookie": cookie,
           "client_id": client_id, "client": client_name(client_id), "addrs": addrs, "host": host,
           "pid": pid, "taken": round(taken, 3)}
    doc["checksum"] = checkedjson.checksum(doc)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def unpack_holder(raw: bytes) -> dict | None:
    """The holder record, or None if ``raw`` is not an intact one of this version (an older
    daemon's plain-text description, or damage)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("format") != HOLDER_FORMAT or doc.get("version") != HOLDER_VERSION \
            or doc.get("checksum") != checkedjson.checksum(doc):
        return None
    if not isinstance(doc.get("client_id"), int) or not isinstance(doc.get("cookie"), str) \
            or not isinstance(doc.get("addrs"), list):
        return None
    return doc
