"""The array's side of one client backup stream: check, verify, write to tape, build the file list.

No sockets and no tape here: frames come from ``recv`` (a :class:`~vstor.backup.client.conn.Conn`'s
or a test's), the pax stream goes to ``sink`` (a TapeWriter's write). Guarantees:

* every entry is checked before any of its bytes go to tape: a path outside the client's
  allowed paths, an unknown type or a hard link to an unknown path is a :class:`PolicyViolation`;
* every regular file's content is hashed as it passes (holes as zeros) and compared with the
  client's FEND sha256: a mismatch is CorruptData and fails the job;
* the job's logical size is checked against the client's quota as the data arrives;
* :attr:`Session.done` lists the entries completely written so far, with their member's end
  offset in the stream, so after a write failure the caller can tell exactly which are safe.
"""

from __future__ import annotations

import errno as _errno
import hashlib
import os
from collections.abc import Callable
from typing import Any

from vstor.backup.client import wire
from vstor.backup.client.array import archive
from vstor.backup.client.scan import TYPES, zeros_into
from vstor.errors import CorruptData, VstorError


class PolicyViolation(VstorError):
    """A client asked for something its registration or the policy does not allow."""

    errno = _errno.EPERM
    exit_code = 7  # as KeyError_: access refused


def allowed(path: str, paths: list[str]) -> bool:
    """Whether absolute, normalized ``path`` is one of ``paths`` or under one (no paths: all)."""
    if not path.startswith("/") or os.path.normpath(path) != path and path != "/":
        return False
    if not paths:
        return True
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in paths)


def check_entry(e: dict, paths: list[str]) -> dict:
    """The FILE frame's entry, validated; PolicyViolation or BadFrame otherwise."""
    try:
        out: dict[str, Any] = {"path": str(e["path"]), "type": str(e["type"]), "size": int(e.get("size", 0)),
               "mode": int(e["mode"]) & 0o7777, "uid": int(e["uid"]), "gid": int(e["gid"]),
               "user": str(e.get("user", "")), "group": str(e.get("group", "")), "mtime_ns": int(e["mtime_ns"]),
               "atime_ns": int(e["atime_ns"]), "link": str(e.get("link", "")),
               "extents": [(int(o), int(n)) for o, n in e.get("extents", [])]}
    except (KeyError, TypeError, ValueError) as x:
        raise wire.BadFrame(f"malformed FILE frame ({x})") from None
    if out["type"] not in TYPES:
        raise wire.BadFrame(f"FILE frame: unknown type {out['type']!r}")
    if not allowed(out["path"], paths):
        raise PolicyViolation(f"policy violation: {out['path']!r} is outside the client's allowed paths "
                              f"({', '.join(paths)})")
    end = 0
    for o, n in out["extents"]:
        if o < end or n <= 0 or o + n > out["size"] or o % 512:
            raise wire.BadFrame(f"FILE frame {out['path']!r}: extents must be sorted, 512-aligned and within the size")
        end = o + n
    if out["type"] != "file" and (out["extents"] or out["size"]):
        raise wire.BadFrame(f"FILE frame {out['path']!r}: a {out['type']} has no data")
    return out


class Session:
    """One stream. ``base``: the previous good job's entries (an incremental), else None."""

    def __init__(self, job: int, recv: Callable[[], tuple[int, bytes]], sink: Callable[[bytes], None],
                 paths: list[str], quota: int | None, base: list[dict] | None) -> None:
        self.job, self.recv, self._sink = job, recv, sink
        self.paths, self.quota = paths, quota
        self.base = {f["path"]: f for f in base or []}
        self.pos = 0  # bytes of the pax stream written so far
        self.done: list[tuple[dict, int]] = []  # (entry, end offset of its member), in stream order
        self.deleted: list[str] = []
        self.sent = self.data_bytes = 0
        self.seen: set[str] = set()
        self.headers = hashlib.sha256()  # of every member's header bytes, for the manifest

    def sink(self, data: bytes) -> None:
        self._sink(data)
        self.pos += len(data)

    def run(self) -> list[dict]:
        """Receive the stream to its END; returns the job's entries (sent and carried over)."""
        while True:
            ftype, body = self.recv()
            if ftype == wire.FILE:
                self._file(check_entry(wire.loads(body), self.paths))
            elif ftype == wire.DELETED:
                self._deleted(wire.loads(body).get("paths", []))
            elif ftype == wire.END:
                doc = wire.loads(body)
                if doc.get("files") != self.sent:
                    raise CorruptData(f"the client says it sent {doc.get('files')} files, the array received "
                                      f"{self.sent}: the stream is incomplete")
                break
            else:
                raise wire.BadFrame(f"{wire.NAMES[ftype]} frame in the middle of a backup stream")
        self._quota(sum(f["size"] for f in self.entries()), "in the job's files")
        self.sink(archive.manifest([(e["path"], e["sha256"]) for e, _ in self.done if e["type"] == "file"], self.job,
                                   len(self.done), self.headers.hexdigest(), self.deleted))
        return self.entries()

    def entries(self) -> list[dict]:
        sent = {e["path"] for e, _ in self.done}
        gone = set(self.deleted)
        kept = [f | {"change": "same"} for p, f in self.base.items() if p not in sent and p not in gone]
        return kept + [e for e, _ in self.done]

    def _deleted(self, paths: list) -> None:
        for p in paths:
            if not isinstance(p, str) or p not in self.base:
                raise wire.BadFrame(f"DELETED names {p!r}, which the base job does not hold")
            self.deleted.append(p)

    def _file(self, e: dict) -> None:
        if e["type"] == "hardlink" and e["link"] not in self.base and e["link"] not in self.seen:
            raise PolicyViolation(f"hard link {e['path']!r} points to {e['link']!r}, which the stream did not send")
        self._quota(self.data_bytes + e["size"], e["path"])
        head, data = archive.header(e)
        self.headers.update(head)
        e["offset"] = self.pos
        self.sink(head)
        e["data_offset"] = self.pos
        e["sha256"] = self._data(e, data) if e["type"] == "file" else None
        self.sink(archive.pad(e))
        e["src_job"] = self.job
        e["change"] = "changed" if e["path"] in self.base else "new"
        self.done.append((e, self.pos))
        self.seen.add(e["path"])
        self.sent += 1
        self.data_bytes += e["size"]

    def _quota(self, logical: int, where: str) -> None:
        if self.quota is not None and logical > self.quota:
            raise PolicyViolation(f"policy violation: the client is over its quota of {self.quota} bytes "
                                  f"({logical} bytes {where})")

    def _data(self, e: dict, total: int) -> str:
        """Receive the file's data frames and its FEND; the verified sha256."""
        h = hashlib.sha256()
        logical = 0  # bytes of the logical file hashed so far
        ext = iter(e["extents"])
        cur = next(ext, None)  # (offset, length) of the extent being received
        left = cur[1] if cur else 0
        got = 0
        while got < total:
            ftype, chunk = self.recv()
            if ftype != wire.DATA or not chunk:
                raise wire.BadFrame(f"{wire.NAMES[ftype]} frame where the data of {e['path']!r} was due")
            if got + len(chunk) > total:
                raise wire.BadFrame(f"{e['path']!r}: more data than its extents hold")
            self.sink(chunk)
            view = memoryview(chunk)
            while view:
                assert cur is not None
                if logical < cur[0]:
                    logical = zeros_into(h, logical, cur[0])
                n = min(left, len(view))
                h.update(view[:n])
                view, left, logical = view[n:], left - n, logical + n
                if not left:
                    cur = next(ext, None)
                    left = cur[1] if cur else 0
            got += len(chunk)
        zeros_into(h, logical, e["size"])
        ftype, body = self.recv()
        if ftype != wire.FEND:
            raise wire.BadFrame(f"{wire.NAMES[ftype]} frame where the end of {e['path']!r} was due")
        want = wire.loads(body).get("sha256")
        if want != h.hexdigest():
            raise CorruptData(f"checksum mismatch on {e['path']!r}: the client sent sha256 {want}, the array "
                              f"received {h.hexdigest()} (damaged or tampered in transit)")
        return h.hexdigest()


__all__ = ["PolicyViolation", "Session", "allowed", "check_entry"]
