"""The pax members the array writes to tape for a client's files. Pure.

A client job's stream (inside the usual part headers and records, tapefile.py) is a POSIX pax
archive that plain GNU tar extracts (``tar -xSf -``): one member per entry, named by its path
without the leading '/', with its mode, owner, times (pax ``mtime``/``atime`` with fractions)
and link target; a file with holes is a GNU sparse 1.0 member (holes kept). Non-UTF-8 names
use pax ``hdrcharset=BINARY``. The archive ends with ``VSTOR-CLIENT-MANIFEST.jsonl``: one JSON
line ``[path, sha256]`` per regular file, so the media describe their own checksums, then the
two zero blocks. The catalog records, per entry, the stream offsets of its member and of its
first data byte, so a restore of one file reads only the records that hold it.
"""

from __future__ import annotations

import json
import tarfile

from vstor.backup import _tarstream as ts

MANIFEST = "VSTOR-CLIENT-MANIFEST.jsonl"
_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}


def member_name(path: str) -> str:
    return path.lstrip("/") or "."


def sparse(e: dict) -> bool:
    """Whether ``e`` goes to tape as a GNU sparse member (a file with holes)."""
    return e["type"] == "file" and sum(n for _o, n in e["extents"]) < e["size"]


def header(e: dict) -> tuple[bytes, int]:
    """The member's header blocks (with its sparse map, if any), and the data bytes that follow
    them (the extents' bytes: then :func:`pad` of the member's size)."""
    name = member_name(e["path"])
    ti = tarfile.TarInfo(name)
    ti.type = _TYPES[e["type"]]
    ti.mode, ti.uid, ti.gid = e["mode"], e["uid"], e["gid"]
    ti.uname, ti.gname = e.get("user", ""), e.get("group", "")
    ti.mtime = e["mtime_ns"] / 1e9
    pax = {"atime": f"{e['atime_ns'] / 1e9:.9f}", "mtime": f"{e['mtime_ns'] / 1e9:.9f}"}
    if e["type"] in ("symlink", "hardlink"):
        ti.linkname = member_name(e["link"]) if e["type"] == "hardlink" else e["link"]
    data = sum(n for _o, n in e["extents"]) if e["type"] == "file" else 0
    smap = b""
    if sparse(e):
        smap = ts.sparse_map(e["size"], [tuple(x) for x in e["extents"]])
        base, _, leaf = name.rpartition("/")
        ti.name = f"{base}/GNUSparseFile.0/{leaf}" if base else f"GNUSparseFile.0/{leaf}"
        pax |= {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": name,
                "GNU.sparse.realsize": str(e["size"])}
    ti.size = len(smap) + data
    ti.pax_headers = pax
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + smap, data


def member_size(e: dict) -> int:
    """The bytes after the header blocks: map plus data (padding not included)."""
    data = sum(n for _o, n in e["extents"]) if e["type"] == "file" else 0
    return data + (len(ts.sparse_map(e["size"], [tuple(x) for x in e["extents"]])) if sparse(e) else 0)


def pad(e: dict) -> bytes:
    return ts.pad(member_size(e))


def manifest(sums: list[tuple[str, str]]) -> bytes:
    """The closing manifest member and the end-of-archive blocks."""
    doc = b"".join(json.dumps([p, s], ensure_ascii=True).encode() + b"\n" for p, s in sums)
    ti = tarfile.TarInfo(MANIFEST)
    ti.size, ti.mode = len(doc), 0o600
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + doc + ts.pad(len(doc)) + bytes(2 * ts.BLOCK)
