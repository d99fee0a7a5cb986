"""Recreating a client's files with their metadata under a target directory (restore).

Used on the array host (``backup restore JOB --to DIR``) and by the agent
(``--to-client NAME --target DIR``). An entry's path ``/a/b`` becomes ``TARGET/a/b``; nothing is
written outside the target (paths are normalized and checked). Regular files are written at
their extents' offsets and truncated to their size, so holes stay holes; every file's sha256 is
checked against the catalog's before it counts as restored. Owners are set when the process may
(root); directory times are set last, after their contents.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Iterable, Iterator

from vstor.backup.client.scan import zeros_into as _zeros
from vstor.errors import CorruptData, UsageError


def dest(target: str, path: str) -> str:
    rel = os.path.normpath(path.lstrip("/"))
    if rel.startswith("..") or os.path.isabs(rel):
        raise UsageError(f"refusing to restore {path!r}: it leads outside the target")
    return os.path.join(target, rel) if rel != "." else target


class Extractor:
    """Writes entries under ``target``; :meth:`finish` sets the directories' metadata."""

    def __init__(self, target: str) -> None:
        self.target = os.path.abspath(target)
        os.makedirs(self.target, exist_ok=True)
        self.dirs: list[tuple[str, dict]] = []
        self.done: dict[str, str] = {}  # entry path -> where it was written (hard links)
        self.files = self.bytes = 0

    def entry(self, e: dict, data: Iterable[bytes] = ()) -> None:
        """Create entry ``e``; ``data``: a file's extents' bytes, concatenated, in any pieces."""
        where = dest(self.target, e["path"])
        parent = os.path.dirname(where)
        if where != self.target:
            os.makedirs(parent, exist_ok=True)
        kind = e["type"]
        if kind == "dir":
            os.makedirs(where, exist_ok=True)
            self.dirs.append((where, e))
        else:
            with contextlib.suppress(FileNotFoundError):
                if os.path.isdir(where) and not os.path.islink(where):
                    os.rmdir(where)
                else:
                    os.unlink(where)
            if kind == "symlink":
                os.symlink(os.fsencode(e["link"]), os.fsencode(where))
            elif kind == "hardlink" and e["link"] in self.done:
                os.link(self.done[e["link"]], where)
                self.done[e["path"]] = where
                self.files += 1
                return  # the inode's metadata came with its first name
            else:
                self._write(where, e, data)
            self._meta(where, e)
        self.done[e["path"]] = where
        self.files += 1

    def _write(self, where: str, e: dict, data: Iterable[bytes]) -> None:
        h = hashlib.sha256()
        fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            it: Iterator[bytes] = iter(data)
            pos, pending = 0, memoryview(b"")
            for off, n in e["extents"]:
                pos = _zeros(h, pos, off)  # the hole before this extent, hashed as zeros
                while n:
                    if not pending:
                        piece = next(it, None)
                        if piece is None:
                            raise CorruptData(f"{e['path']!r}: the data ends {n} bytes short of its extents")
                        pending = memoryview(piece)
                    k = min(n, len(pending))
                    os.pwrite(fd, pending[:k], pos)
                    h.update(pending[:k])
                    pos, n, pending = pos + k, n - k, pending[k:]
                    self.bytes += k
            if len(pending) or next(it, b""):
                raise CorruptData(f"{e['path']!r}: more data than its extents hold")
            _zeros(h, pos, e["size"])
            os.ftruncate(fd, e["size"])
        finally:
            os.close(fd)
        if e.get("sha256") and h.hexdigest() != e["sha256"]:
            os.unlink(where)
            raise CorruptData(f"restored {e['path']!r} does not match its sha256 {e['sha256']} (read "
                              f"{h.hexdigest()}): the media are damaged")

    def _meta(self, where: str, e: dict) -> None:
        link = e["type"] == "symlink"
        try:
            os.chown(where, e["uid"], e["gid"], follow_symlinks=not link)
        except OSError as x:
            if x.errno != errno.EPERM:
                raise
        if not link:
            os.chmod(where, e["mode"])
        os.utime(where, ns=(e["atime_ns"], e["mtime_ns"]), follow_symlinks=not link)

    def finish(self) -> dict:
        for where, e in reversed(self.dirs):  # children before parents: their times stick
            self._meta(where, e)
        return {"target": self.target, "files": self.files, "bytes": self.bytes}
