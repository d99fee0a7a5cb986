"""Control socket protocol (version 1): newline-delimited JSON over a Unix stream socket.

Request:  {"v": 1, "op": "volume.create", "args": {"name": "a", "size": 1073741824}}
Response: {"ok": true, "result": ...}
       or {"ok": false, "error": {"type": "NotFound", "message": "..."}}
A request may add "progress": true. The daemon then sends, while the operation runs, a line
{"progress": {"done": N, "total": M}} (or {"progress": {}}) at least every KEEPALIVE seconds
before the response: the client knows it is alive however long the operation takes.
One request per line; a line may not exceed MAX_LINE bytes nor nest deeper than
boundedjson.MAX_DEPTH levels. The socket is POOL/control.sock,
mode 0600: only root (the pool's owner) may talk to the daemon.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from vstor import boundedjson
from vstor.errors import NotRunning, TimedOut, UsageError, VstorError, error_from_wire

VERSION = 1
MAX_LINE = 1 << 20
KEEPALIVE = 1.0  # seconds between progress lines while an operation runs
DEFAULT_TIMEOUT = 120.0  # a client's limit for operations that do not report progress


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def decode_request(line: bytes) -> tuple[str, dict, bool]:
    """(op, args, whether the client wants progress lines)."""
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
    return req["op"], args, req.get("progress") is True


def error_reply(e: VstorError) -> dict:
    return {"ok": False, "error": {"type": type(e).__name__, "message": e.message}}


def call(sock_path: str, op: str, timeout: float | None = DEFAULT_TIMEOUT,
         progress: Callable[[dict], None] | None = None, idle: float | None = None, **args: Any) -> Any:
    """Send one request and return its result, re-raising a remote error with its class.
    ``timeout``: seconds to wait for the result (None: no limit). ``progress``: asks for
    progress lines and is called with each one's dict. ``idle``: seconds to wait for each
    line (a progress line or the result; None: no limit), so that an operation is waited for
    as long as the daemon reports on it, and a daemon that goes silent is not.

    A connection the daemon resets or closes, or a reply that does not come, is one
    NotRunning, TimedOut or VstorError naming the daemon's log, never a bare socket error."""
    log_hint = os.path.join(os.path.dirname(os.path.abspath(sock_path)), "log", "daemon.log")
    deadline = None if timeout is None else time.monotonic() + timeout
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout if idle is None else min(idle, timeout or idle))
    req: dict[str, Any] = {"v": VERSION, "op": op, "args": args}
    if progress is not None:
        req["progress"] = True
    try:
        try:
            s.connect(sock_path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunning("the array is not running for this pool (start it with 'vstor array start')") from None
        s.sendall(encode(req))
        buf = b""
        while True:
            while b"\n" not in buf:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
                s.settimeout(left if idle is None else min(idle, left or idle))
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    if idle is not None and (left is None or left > idle):
                        raise TimedOut(f"the daemon sent nothing on {op} for {idle:g} s (no progress line, no "
                                       "answer); it may still complete: check its result, or see its log "
                                       f"{log_hint}") from None
                    raise TimedOut(f"no answer from the daemon to {op} within {timeout:g} s; it may still "
                                   "complete: check its result, or wait longer with --timeout SECONDS "
                                   "(0: no limit)") from None
                if not chunk:
                    raise ConnectionResetError
                buf += chunk
            line, buf = buf.split(b"\n", 1)
            try:
                reply = json.loads(line)
            except ValueError:
                raise VstorError(f"the array daemon sent a reply that is not JSON; see {log_hint}") from None
            if not isinstance(reply, dict):
                raise VstorError(f"the array daemon sent a malformed reply; see {log_hint}")
            if "progress" not in reply:
                break
            if progress is not None:
                progress(reply["progress"])
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        raise NotRunning("the array daemon closed the connection (it may have stopped or crashed); "
                         f"see {log_hint}") from None
    finally:
        s.close()
    if reply.get("ok"):
        return reply.get("result")
    err = reply.get("error", {})
    raise error_from_wire(err.get("type", "VstorError"), err.get("message", "unknown error"))
