"""A client's files: metadata, sparse extents, hard links, and what an incremental sends.

Runs on the client (no sockets). Paths travel as ``str`` with surrogate escapes for bytes
that are not UTF-8 (``os.fsdecode``), so any file name round-trips through the JSON frames.

An entry (the FILE frame's body)::

    {"path", "type": "file"|"dir"|"symlink"|"hardlink", "size", "mode", "uid", "gid",
     "user", "group", "mtime_ns", "atime_ns", "link", "extents": [[offset, length], ...]}

``link`` is a symlink's target, or for a hard link the path of the first name of the inode
in this scan (that one is sent as a "file" with the data). ``extents`` are a regular file's
data ranges (SEEK_DATA/SEEK_HOLE), widened to 512-byte boundaries so tar reads them the same.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import pwd
import stat
from collections.abc import Iterator
from functools import lru_cache

from vstor.backup.media._tarstream import aligned
from vstor.errors import UsageError

TYPES = ("file", "dir", "symlink", "hardlink")


@lru_cache(maxsize=256)
def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@lru_cache(maxsize=256)
def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The data ranges of an open regular file (the whole file where SEEK_DATA is unsupported)."""
    out, pos = [], 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break  # only a hole up to the end
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, end - start))
            pos = end
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        out = [(0, size)] if size else []
    return out


def entry(path: str, st: os.stat_result, links: dict[tuple[int, int], str]) -> dict | None:
    """The entry for ``path`` (None for sockets, devices and fifos, which are not backed up)."""
    e = {"path": path, "size": 0, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
         "user": _user(st.st_uid), "group": _group(st.st_gid), "mtime_ns": st.st_mtime_ns,
         "atime_ns": st.st_atime_ns, "link": "", "extents": []}
    if stat.S_ISDIR(st.st_mode):
        e["type"] = "dir"
    elif stat.S_ISLNK(st.st_mode):
        e["type"], e["link"] = "symlink", os.fsdecode(os.readlink(path))
    elif stat.S_ISREG(st.st_mode):
        first = links.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
        if first is not None:
            e["type"], e["link"] = "hardlink", first
            return e
        if st.st_nlink > 1:
            links[(st.st_dev, st.st_ino)] = path
        e["type"], e["size"] = "file", st.st_size
    else:
        return None
    return e


def walk(roots: list[str]) -> Iterator[dict]:
    """Every entry under ``roots`` (absolute paths), parents before children, in name order."""
    links: dict[tuple[int, int], str] = {}
    for root in roots:
        root = os.path.abspath(root)
        try:
            st = os.lstat(root)
        except OSError as e:
            raise UsageError(f"cannot back up {root}: {e.strerror}") from None
        yield from _walk(root, st, links)


def _walk(path: str, st: os.stat_result, links: dict[tuple[int, int], str]) -> Iterator[dict]:
    e = entry(path, st, links)
    if e is None:
        return
    yield e
    if e["type"] != "dir":
        return
    try:
        names = sorted(os.listdir(os.fsencode(path)))
    except OSError:
        return  # unreadable directory: its entry is kept, its contents are not reachable
    for name in names:
        child = os.path.join(path, os.fsdecode(name))
        try:
            cst = os.lstat(child)
        except FileNotFoundError:
            continue  # gone since the listing
        yield from _walk(child, cst, links)


def file_extents(path: str, size: int) -> tuple[int, list[tuple[int, int]]]:
    """An open descriptor of regular file ``path`` and its aligned data extents."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    return fd, aligned(path, size, extents(fd, size))


def changed(e: dict, base: dict[str, tuple[str, int, int]]) -> bool:
    """Whether an incremental sends ``e``: new, or its type, size or mtime differ from the base's."""
    old = base.get(e["path"])
    return old is None or old != (e["type"], e["size"], e["mtime_ns"]) or e["type"] == "hardlink"


def base_index(rows: list[list] | None) -> dict[str, tuple[str, int, int]]:
    """The WELCOME frame's base list as {path: (type, size, mtime_ns)}."""
    return {r[0]: (r[1], int(r[2]), int(r[3])) for r in rows or []}


def base_sums(rows: list[list] | None) -> dict[str, str]:
    """The base list's file checksums {path: sha256 hex} (rows from an array that sends them)."""
    return {r[0]: r[4] for r in rows or [] if len(r) > 4 and r[4]}


def content_differs(e: dict, sums: dict[str, str]) -> bool:
    """Whether regular file ``e``, unchanged in type, size and mtime, holds other bytes than the
    base job recorded (``--check-content``: reads the whole file)."""
    want = sums.get(e["path"])
    if e["type"] != "file" or want is None:
        return False
    h = hashlib.sha256()
    try:
        with open(e["path"], "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return True  # unreadable now: send it, and let the send say why
    return h.hexdigest() != want


ZEROS = bytes(1 << 20)


def zeros_into(h: hashlib._Hash, start: int, end: int) -> int:
    """Hash zeros from ``start`` to ``end`` (a hole); returns ``end``. Both sides hash a sparse
    file's holes this way (the agent, the array's session and listing, extract)."""
    while start < end:
        n = min(len(ZEROS), end - start)
        h.update(ZEROS[:n])
        start += n
    return end
