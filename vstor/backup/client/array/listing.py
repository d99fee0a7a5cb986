"""A client job's pax stream read back into the entries its catalog rows hold. Pure (no tape).

The inverse of archive.py and of the offsets session.py records: for each entry member, the
path (``/`` + the member name; non-UTF-8 bytes as surrogate escapes, as the protocol has them),
type, size (a sparse member's ``GNU.sparse.realsize``), mode, uid, gid, owner names, times in
nanoseconds exactly as written, link (a hard link's target as a path), extents (a sparse
member's map, else the whole file), the stream offsets of the member and of its first data
byte, and the sha256 of the content (holes as zeros), computed here.

Guarantees of :func:`read_listing`: nothing is returned unless the whole stream parsed and
every check held: each regular file's sha256 equals the manifest's, in order; for a version 2
manifest, its own sha256, the count of entry members and the sha256 of their header bytes
(so a changed byte anywhere in a header, its pax records or a sparse map is found), and the
job id. Any damage, a cut stream or a member after the manifest is CorruptData naming what.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from vstor.backup.client.array import archive
from vstor.backup.client.scan import zeros_into
from vstor.backup.media import _tarstream as ts
from vstor.errors import CorruptData, FormatError

__all__ = ["Listing", "read_listing"]

PIECE = 1 << 20  # the largest piece of a file's data held at once
_KINDS = {b"0": "file", b"5": "dir", b"2": "symlink", b"1": "hardlink"}


@dataclass
class Listing:
    """A job's entry members in stream order (each the protocol's entry with "sha256", "offset"
    and "data_offset"), the paths its manifest records as deleted (None in a version 1 manifest,
    which does not list them) and the manifest's version."""

    entries: list[dict]
    deleted: list[str] | None
    version: int


def _bad(msg: str) -> Exception:
    return CorruptData(f"client stream: {msg}")


def read_listing(chunks: Iterable[bytes], job: int) -> Listing:
    """The listing of job ``job``'s stream, given as chunks of any size, in order."""
    inp = ts.Input(iter(chunks))
    entries: list[dict] = []
    headers = hashlib.sha256()
    doc = None
    try:
        while True:
            start = inp.done
            raw = inp.take(ts.BLOCK)
            if not any(raw):
                if any(inp.take(ts.BLOCK)):
                    raise _bad(f"a lone zero block at byte {start}")
                break
            if doc is not None:
                raise _bad(f"a member after the manifest, at byte {start}")
            ti = _header(raw, start)
            if ti.type != b"x":  # only the manifest has no pax header
                if ti.name != archive.MANIFEST or ti.type not in (b"0", b"\0"):
                    raise _bad(f"member {ti.name!r} at byte {start} has no pax header")
                doc = inp.take(ti.size)
                inp.take(-ti.size % ts.BLOCK)
                continue
            records = inp.take(ti.size)
            head = raw + records + inp.take(-ti.size % ts.BLOCK)
            main = inp.take(ts.BLOCK)
            e, smap = _entry(ts.pax_records(records, _bad), _header(main, inp.done - ts.BLOCK), inp)
            headers.update(head + main + smap)
            e["offset"] = start
            entries.append(e)
    except FormatError as x:  # the stream was empty
        raise _bad(str(x)) from None
    if doc is None:
        raise _bad("the stream ends without its manifest")
    deleted, version = _check(doc, entries, headers.hexdigest(), job)
    return Listing(entries, deleted, version)


@dataclass
class _Ustar:
    """The fields of a ustar header block this reader uses."""

    name: str
    type: bytes
    mode: int
    size: int


def _header(raw: bytes, at: int) -> _Ustar:
    """The ustar header block at byte ``at``, its checksum checked (tarfile's frombuf does more,
    and takes most of the time of a listing of small files)."""
    try:
        if _octal(raw[148:156]) != sum(raw[:148]) + 256 + sum(raw[156:]):  # the field counts as 8 spaces
            raise ValueError("bad checksum")
        if raw[257:265] != b"ustar\x0000":
            raise ValueError("not a POSIX ustar/pax header")
        return _Ustar(raw[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape"), raw[156:157],
                      _octal(raw[100:108]), _octal(raw[124:136]))
    except ValueError as x:
        raise _bad(f"the block at byte {at} is not a tar header of this format ({x})") from None


def _octal(field: bytes) -> int:
    return int(field.split(b"\0", 1)[0].strip(b" ") or b"0", 8)


def _entry(pax: dict[str, str], ti: _Ustar, inp: ts.Input) -> tuple[dict, bytes]:
    """The entry of one member (its data read and hashed) and its sparse map's bytes."""
    kind = _KINDS.get(ti.type)
    try:
        name = pax["path"]
        if kind is None:
            raise ValueError(f"type {ti.type!r}")
        size = int(pax.get("size", ti.size))
        sparse = kind == "file" and pax.get("GNU.sparse.major") == "1"
        realsize = size
        if sparse:
            name, realsize = pax["GNU.sparse.name"], int(pax["GNU.sparse.realsize"])
        if kind == "dir":
            name = name.removesuffix("/")
        link = pax.get("linkpath", "") if kind in ("symlink", "hardlink") else ""
        e = {"path": "/" if name == "." else "/" + name, "type": kind, "size": 0, "mode": ti.mode & 0o7777,
             "uid": int(pax["uid"]), "gid": int(pax["gid"]), "user": pax["uname"], "group": pax["gname"],
             "mtime_ns": _ns(pax["mtime"]), "atime_ns": _ns(pax["atime"]),
             "link": "/" + link if kind == "hardlink" else link, "extents": []}
    except (KeyError, ValueError) as x:
        raise _bad(f"member {ti.name!r}: its pax header lacks or garbles {x}") from None
    smap = b""
    e["data_offset"] = inp.done
    if kind != "file":
        if size:
            raise _bad(f"{e['path']!r}: a {kind} member with {size} bytes of data")
        e["sha256"] = None
        return e, smap
    if sparse:
        smap, nums = ts.read_sparse_map(inp, size, _bad, repr(e["path"]))
        e["data_offset"] = inp.done
        if len(nums) % 2:
            raise _bad(f"{e['path']!r}: the sparse map has an odd count of numbers")
        e["size"] = realsize
        e["extents"] = [(o, n) for o, n in zip(nums[::2], nums[1::2], strict=True) if n]
    else:
        e["size"] = size
        e["extents"] = [(0, size)] if size else []
    e["sha256"] = _data(inp, e, size - len(smap))
    inp.take(-size % ts.BLOCK)
    return e, smap


def _data(inp: ts.Input, e: dict, total: int) -> str:
    """Read the member's ``total`` data bytes; the sha256 of the file they make (holes as zeros)."""
    h, pos, got = hashlib.sha256(), 0, 0
    for off, n in e["extents"]:
        if off < pos or off + n > e["size"]:
            raise _bad(f"{e['path']!r}: extents out of order or past its size {e['size']}")
        pos = zeros_into(h, pos, off)
        while n:
            piece = inp.take(min(n, PIECE))
            h.update(piece)
            pos, n, got = pos + len(piece), n - len(piece), got + len(piece)
    if got != total:
        raise _bad(f"{e['path']!r}: its extents hold {got} bytes, its member {total}")
    zeros_into(h, pos, e["size"])
    return h.hexdigest()


def _ns(text: str) -> int:
    """Nanoseconds from a pax time as archive.py writes it (``SEC`` or ``SEC.NNNNNNNNN``)."""
    sec, dot, frac = text.partition(".")
    if dot and (len(frac) != 9 or not frac.isdigit()):
        raise ValueError(f"time {text!r}")
    return int(sec) * 10 ** 9 + (int(frac) if dot else 0)


def _check(doc: bytes, entries: list[dict], headers: str, job: int) -> tuple[list[str] | None, int]:
    """Check the manifest against what was read; its deletions (None in version 1) and version."""
    try:
        lines = [json.loads(x) for x in doc.split(b"\n")[:-1]]
    except ValueError as x:
        raise _bad(f"the manifest is not JSON lines ({x})") from None
    if not doc.endswith(b"\n"):
        raise _bad("the manifest is cut short")
    version, deleted = 1, None
    if lines and isinstance(lines[0], dict):
        head, end = lines[0], lines[-1]
        if head.get("format") != archive.MANIFEST_FORMAT or not isinstance(head.get("version"), int):
            raise _bad("the manifest's head is not a vstor client manifest's")
        version = head["version"]
        if version > archive.MANIFEST_VERSION:
            raise _bad(f"manifest version {version} is newer than this vstor reads ({archive.MANIFEST_VERSION})")
        body = doc[: doc.rindex(b"\n", 0, len(doc) - 1) + 1] if len(lines) > 1 else b""
        if not body or end != {"sha256": hashlib.sha256(body).hexdigest()}:
            raise _bad("the manifest does not match its own sha256")
        if head.get("job") != job:
            raise _bad(f"the manifest is job {head.get('job')}'s, not job {job}'s")
        if head.get("members") != len(entries) or head.get("headers_sha256") != headers:
            raise _bad(f"the manifest describes {head.get('members')} members, the stream holds {len(entries)} "
                       "or their headers differ")
        deleted, lines = head.get("deleted"), lines[1:-1]
        if not isinstance(deleted, list) or not all(isinstance(p, str) for p in deleted):
            raise _bad("the manifest's deleted paths are not a list of paths")
    want = [tuple(x) if isinstance(x, list) else x for x in lines]
    got = [(e["path"], e["sha256"]) for e in entries if e["type"] == "file"]
    if want != got:
        bad = next((g for w, g in zip(want, got, strict=False) if w != g), None)
        what = f"{bad[0]!r} reads back with another sha256 than" if bad else "the files differ from"
        raise _bad(f"{what} the manifest records")
    return deleted, version
