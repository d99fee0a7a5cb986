"""Control socket protocol (version 1): newline-delimited JSON over a Unix stream socket.

Request:  {"v": 1, "op": "volume.create", "args": {"name": "a", "size": 1073741824}}
Response: {"ok": true, "result": ...}
       or {"ok": false, "error": {"type": "NotFound", "message": "..."}}
One request per line; a line may not exceed MAX_LINE bytes nor nest deeper than
boundedjson.MAX_DEPTH levels. The socket is POOL/control.sock,
mode 0600: only root (the pool's owner) may talk to the daemon.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from vstor import boundedjson
from vstor.errors import NotRunning, UsageError, VstorError, error_from_wire

VERSION = 1
MAX_LINE = 1 << 20


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def decode_request(line: bytes) -> tuple[str, dict]:
    try:
        req = boundedjson.loads(line)
    except boundedjson.TooDeep as e:
        raise UsageError(f"control request is {e}") from None
    except ValueError:
        raise UsageError("control request is not JSON") from None
    if not isinstance(req, dict) or req.get("v") != VERSION or not isinstance(req.get("op"), str):
        raise UsageError(f"control request must be {{'v': {VERSION}, 'op': ..., 'args': {{...}}}}")
    args = req.get("args") or {}
    if not isinstance(args, dict):
        raise UsageError("control request args must be an object")
    return req["op"], args


def error_reply(e: VstorError) -> dict:
    return {"ok": False, "error": {"type": type(e).__name__, "message": e.message}}


def call(sock_path: str, op: str, timeout: float = 120.0, **args: Any) -> Any:
    """Send one request and return its result, re-raising a remote error with its class."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(sock_path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunning("the array is not running for this pool (start it with 'vstor array start')") from None
        s.sendall(encode({"v": VERSION, "op": op, "args": args}))
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise NotRunning("the array daemon closed the connection (it may have stopped)")
            buf += chunk
    finally:
        s.close()
    reply = json.loads(buf)
    if reply.get("ok"):
        return reply.get("result")
    err = reply.get("error", {})
    raise error_from_wire(err.get("type", "VstorError"), err.get("message", "unknown error"))
