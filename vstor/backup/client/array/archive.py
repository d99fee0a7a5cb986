"""The pax members the array writes to tape for a client's files. Pure.

A client job's stream (inside the usual part headers and records, tapefile.py) is a POSIX pax
archive that plain GNU tar extracts (``tar -xSf -``): one member per entry, named by its path
without the leading '/', with its mode, owner, times (pax ``mtime``/``atime`` with fractions)
and link target; a file with holes is a GNU sparse 1.0 member (holes kept). Non-UTF-8 names
use pax ``hdrcharset=BINARY``. The archive ends with ``VSTOR-CLIENT-MANIFEST.jsonl`` (a
member without a pax header, which no entry's member is), then the two zero blocks. The
manifest (version :data:`MANIFEST_VERSION`) is JSON lines: a head object (the job, the count
of entry members, the sha256 of all their header bytes, the paths the job records as deleted
since its base), one ``[path, sha256]`` line per regular file, and ``{"sha256"}`` of the lines
before it; so the media describe the job's whole file list and its checksums, and
``backup catalog rebuild`` brings it back (listing.py). Version 1 manifests, written before,
hold only the ``[path, sha256]`` lines. The catalog records, per entry, the stream offsets of
its member and of its first data byte, so a restore of one file reads only the records that
hold it.
"""

from __future__ import annotations

import hashlib
import json
import struct
import tarfile

from vstor.backup.media import _tarstream as ts

MANIFEST = "VSTOR-CLIENT-MANIFEST.jsonl"
MANIFEST_FORMAT = "vstor-client-manifest"
MANIFEST_VERSION = 2  # 1: only the [path, sha256] lines
_TYPES = {"file": b"0", "dir": b"5", "symlink": b"2", "hardlink": b"1"}


def member_name(path: str) -> str:
    return path.lstrip("/") or "."


def sparse(e: dict) -> bool:
    """Whether ``e`` goes to tape as a GNU sparse member (a file with holes)."""
    return e["type"] == "file" and sum(n for _o, n in e["extents"]) < e["size"]


def header(e: dict) -> tuple[bytes, int]:
    """The member's header blocks (with its sparse map, if any), and the data bytes that follow
    them (the extents' bytes: then :func:`pad` of the member's size)."""
    name = member_name(e["path"]) + ("/" if e["type"] == "dir" else "")
    data = sum(n for _o, n in e["extents"]) if e["type"] == "file" else 0
    pax = [("path", name), ("mtime", _time(e["mtime_ns"])), ("atime", _time(e["atime_ns"])),
           ("uid", str(e["uid"])), ("gid", str(e["gid"])), ("uname", e.get("user", "")),
           ("gname", e.get("group", ""))]
    link = ""
    if e["type"] in ("symlink", "hardlink"):
        link = member_name(e["link"]) if e["type"] == "hardlink" else e["link"]
        pax.append(("linkpath", link))
    smap = b""
    ustar_name = name
    if sparse(e):
        smap = ts.sparse_map(e["size"], [tuple(x) for x in e["extents"]])
        base, _, leaf = name.rpartition("/")
        ustar_name = f"{base}/GNUSparseFile.0/{leaf}" if base else f"GNUSparseFile.0/{leaf}"
        pax = [(k, ustar_name if k == "path" else v) for k, v in pax]
        pax += [("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.name", name),
                ("GNU.sparse.realsize", str(e["size"]))]
    size = len(smap) + data
    if size >= 8 ** 11:
        pax.append(("size", str(size)))
    records = _pax_records(pax)
    xhead = _ustar(b"././@PaxHeader", 0o644, 0, 0, len(records), 0, b"x", b"", b"", b"")
    main = _ustar(_enc(ustar_name), e["mode"], e["uid"], e["gid"], size if size < 8 ** 11 else 0,
                  e["mtime_ns"] // 10 ** 9, _TYPES[e["type"]], _enc(link), _enc(e.get("user", "")),
                  _enc(e.get("group", "")))
    return xhead + records + ts.pad(len(records)) + main + smap, data


def _time(ns: int) -> str:
    """A pax time from nanoseconds, exactly (a float would round)."""
    sec, frac = divmod(ns, 10 ** 9)
    return f"{sec}.{frac:09d}" if frac else str(sec)


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _pax_records(pairs: list[tuple[str, str]]) -> bytes:
    """A pax extended header's records; ``hdrcharset=BINARY`` first when a value is not UTF-8."""
    out = []
    binary = False
    for k, v in pairs:
        try:
            raw = v.encode("utf-8")
        except UnicodeEncodeError:
            raw, binary = _enc(v), True
        out.append((k.encode(), raw))
    if binary:
        out.insert(0, (b"hdrcharset", b"BINARY"))
    return b"".join([b"%d %s=%s\n" % (_record_length(len(kb) + len(vb) + 3), kb, vb) for kb, vb in out])


def _record_length(body: int) -> int:
    """A pax record's length field: ``body`` (key, value, the space, '=' and the newline) plus
    the digits of the length itself. Adding the digits can add one digit, never two."""
    n = body + len(str(body))
    return n if len(str(n)) == len(str(body)) else body + len(str(n))


# name mode uid gid size mtime chksum typeflag linkname magic+version uname gname devmajor devminor
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s167x")  # 512 bytes; 's' pads with NULs
_NO_DEV = b"%07o\0" % 0


def _ustar(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, typeflag: bytes, link: bytes,
           uname: bytes, gname: bytes) -> bytes:
    """One POSIX ustar header block; fields that do not fit are cut (the pax records before it
    carry them whole)."""
    def num(v: int, width: int) -> bytes:
        return b"%0*o\0" % (width - 1, v if 0 <= v < 8 ** (width - 1) else 0)

    buf = _USTAR.pack(name[:100], num(mode & 0o7777, 8), num(uid, 8), num(gid, 8), num(size, 12), num(mtime, 12),
                      b" " * 8, typeflag, link[:100], b"ustar\x0000", uname[:32], gname[:32], _NO_DEV, _NO_DEV)
    return b"%s%06o\0 %s" % (buf[:148], sum(buf), buf[156:])


def member_size(e: dict) -> int:
    """The bytes after the header blocks: map plus data (padding not included)."""
    data = sum(n for _o, n in e["extents"]) if e["type"] == "file" else 0
    return data + (len(ts.sparse_map(e["size"], [tuple(x) for x in e["extents"]])) if sparse(e) else 0)


def pad(e: dict) -> bytes:
    return ts.pad(member_size(e))


def manifest(sums: list[tuple[str, str]], job: int, members: int, headers_sha256: str, deleted: list[str]) -> bytes:
    """The closing manifest member and the end-of-archive blocks. ``sums``: (path, sha256) per
    regular file in stream order; ``members``: the entry members before it; ``headers_sha256``:
    of their header bytes (each :func:`header`'s, in order); ``deleted``: the base's paths gone."""
    head = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "job": job, "members": members,
            "headers_sha256": headers_sha256, "deleted": list(deleted)}
    doc = b"".join(_line(x) for x in [head, *([p, s] for p, s in sums)])
    doc += _line({"sha256": hashlib.sha256(doc).hexdigest()})
    ti = tarfile.TarInfo(MANIFEST)
    ti.size, ti.mode = len(doc), 0o600
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + doc + ts.pad(len(doc)) + bytes(2 * ts.BLOCK)


def _line(x: object) -> bytes:
    return json.dumps(x, ensure_ascii=True, sort_keys=True).encode() + b"\n"
