"""The backup client protocol (version 1): frames, JSON bodies and optional client-side sealing.

Pure: no sockets. docs/formats.md "Backup client protocol" is the authoritative description.
A connection is a TLS 1.3 stream (mutual authentication, ``vstor pki`` certificates) of frames::

    header (16 bytes: magic "VBC1", type u8, flags u8, reserved u16, length u32, frame_no u32)
    | payload (length bytes)

``frame_no`` counts the frames of one direction from 0 and must grow by one. A client with a
key (``--key-file``) seals the payload of every FILE, DATA, FEND and DELETED frame with
AES-256-GCM: nonce = direction byte + frame number (12 bytes), associated data = the header,
so a frame that is altered, moved or read with another key fails authentication. The key id
the client declares in HELLO is :func:`key_id` of the key (a hash, never the key).
"""

from __future__ import annotations

import hashlib
import json
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vstor import boundedjson
from vstor.replication.wire import BadFrame as _ReplicationBadFrame
from vstor.replication.wire import order_problem

VERSION = 1
MAGIC = b"VBC1"
HEADER = struct.Struct(">4sBBHII")  # magic type flags reserved length frame_no
MAX_PAYLOAD = 64 << 20  # the base file list of a large client fits; larger frames are refused
DATA_CHUNK = 1 << 20  # the largest DATA frame a sender makes
F_SEALED = 1

HELLO = 1  # client -> array, JSON: {"version", "name", "role": "push"|"agent", "policy", "level", "key_id", "paths"}
WELCOME = 2  # array -> client, JSON: {"job", "level", "base": [[path, type, size, mtime_ns], ...] | null}
REFUSE = 3  # either way, JSON {"reason", "code"}: the sender closes after it
FILE = 4  # client -> array (or array -> agent on restore), JSON: one file's metadata
DATA = 5  # binary: the next bytes of the current file's data extents
FEND = 6  # JSON {"sha256"}: the current file is complete; sha256 of its whole content
DELETED = 7  # JSON {"paths": [...]}: files of the base job that are gone (incremental)
END = 8  # JSON {"files", "bytes"}: the stream is complete
RESULT = 9  # JSON: the job (or restore) as it ended: {"job", "status", "reason", ...}
RUN = 10  # array -> agent, JSON {"policy", "level"}: back up now (the agent answers with a HELLO)
RESTORE = 11  # array -> agent, JSON {"target", "job"}: FILE/DATA/FEND frames follow, then END
PING = 12  # either way, empty: keepalive on an idle agent connection

NAMES = {HELLO: "HELLO", WELCOME: "WELCOME", REFUSE: "REFUSE", FILE: "FILE", DATA: "DATA", FEND: "FEND",
         DELETED: "DELETED", END: "END", RESULT: "RESULT", RUN: "RUN", RESTORE: "RESTORE", PING: "PING"}
SEALABLE = frozenset({FILE, DATA, FEND, DELETED})
KEY_BYTES = 32


class BadFrame(_ReplicationBadFrame):
    """A frame failed a check (format, order, size or authentication); nothing of it was used."""


def key_id(key: bytes) -> str:
    """The public name of a client key: 16 hex digits of a hash of it."""
    return hashlib.sha256(b"vstor-client-key\0" + key).hexdigest()[:16]


def load_key(path: str) -> bytes:
    """A client key file: 32 raw bytes, or 64 hex digits."""
    from vstor.errors import UsageError

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UsageError(f"cannot read the key file {path}: {e.strerror}") from None
    text = raw.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode())
        except ValueError:
            pass
    if len(raw) == KEY_BYTES:
        return raw
    raise UsageError(f"{path} is not a client key: use 32 random bytes or 64 hex digits "
                     "(e.g. head -c32 /dev/urandom > KEYFILE)")


def pack(ftype: int, payload: bytes, frame_no: int, key: bytes | None = None, direction: int = 0) -> bytes:
    flags = 0
    if key is not None and ftype in SEALABLE:
        flags = F_SEALED
        head = HEADER.pack(MAGIC, ftype, flags, 0, len(payload) + 16, frame_no)
        payload = AESGCM(key).encrypt(_nonce(direction, frame_no), payload, head)
    else:
        head = HEADER.pack(MAGIC, ftype, flags, 0, len(payload), frame_no)
    if len(payload) > MAX_PAYLOAD:
        raise BadFrame(f"frame of {len(payload)} bytes exceeds the protocol's {MAX_PAYLOAD}")
    return head + payload


def parse_header(head: bytes, expect_no: int) -> tuple[int, int, int]:
    """(type, flags, payload length) of a frame header; BadFrame if anything is off."""
    magic, ftype, flags, _, length, frame_no = HEADER.unpack(head)
    if magic != MAGIC:
        raise BadFrame(f"not a vstor backup client frame (magic {magic!r})")
    if ftype not in NAMES:
        raise BadFrame(f"unknown frame type {ftype}")
    why = order_problem(length, MAX_PAYLOAD, frame_no, expect_no)
    if why:
        raise BadFrame(why)
    return ftype, flags, length


def unseal(head: bytes, payload: bytes, key: bytes | None, direction: int) -> bytes:
    """The payload of a received frame: opened when sealed. A sealed frame without a key, a
    sealable frame without a seal when a key is expected, or a failed authentication: BadFrame."""
    magic, ftype, flags, _, _, frame_no = HEADER.unpack(head)
    if not flags & F_SEALED:
        if key is not None and ftype in SEALABLE:
            raise BadFrame(f"a {NAMES[ftype]} frame is not encrypted, but the client's key requires it")
        return payload
    if key is None:
        raise BadFrame(f"a {NAMES[ftype]} frame is encrypted, but no client key is registered for it")
    try:
        return AESGCM(key).decrypt(_nonce(direction, frame_no), payload, head)
    except Exception:
        raise BadFrame(f"incorrect encryption key: {NAMES[ftype]} frame {frame_no} fails authentication "
                       "(the client's key differs from the one registered, or the frame was altered)") from None


def _nonce(direction: int, frame_no: int) -> bytes:
    return bytes([direction]) + bytes(3) + frame_no.to_bytes(8, "big")


def dumps(obj: object) -> bytes:
    """JSON as the protocol sends it: paths are str with surrogate escapes for non-UTF-8 bytes."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode()


def loads(payload: bytes) -> dict:
    try:
        obj = boundedjson.loads(payload)
    except ValueError as e:
        raise BadFrame(f"malformed JSON frame: {e}") from None
    if not isinstance(obj, dict):
        raise BadFrame("malformed JSON frame: not an object")
    return obj
