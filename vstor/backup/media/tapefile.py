"""The on-media backup format: part headers, tape labels, the pax stream and record sealing.

Pure functions and data classes, no drive I/O. Guarantees:

* a :class:`PartHeader` or :class:`TapeLabel` encodes to exactly :data:`RECORD` bytes of NUL-padded
  ASCII text (an Amanda-style header a person can read with ``dd | strings``); ``decode`` checks the
  magic line and the xxh3-64 of the JSON line and raises :class:`FormatError` otherwise;
* :func:`pax_stream` yields a POSIX pax archive with one GNU sparse 1.0 member per volume, which
  GNU tar >= 1.15.92 extracts (``tar -xSf -``) byte-identical with the holes kept, then a manifest
  member; memory stays bounded (extents are read in pieces of at most :data:`PIECE` bytes);
* :func:`read_stream` accepts such a stream in any chunking, hands every extent to ``apply`` and
  checks each member's sha256 against the manifest (CorruptData on a mismatch or a cut stream);
* :func:`seal_record` / :func:`open_record`: AES-256-GCM with the nonce derived from (job, part,
  index) and those three bound as associated data, so a moved, swapped or altered block fails.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Protocol, Self

import xxhash
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vstor.backup.media import _tarstream as ts
from vstor.errors import CorruptData, FormatError, UsageError

RECORD = 256 * 1024  # one tape block = one tar record (tar -b 512)
FORMAT_VERSION = 1
SEAL_OVERHEAD = 16  # bytes seal_record adds to a record: the AES-GCM tag
PIECE = 4 << 20  # the largest piece read from a source or handed to apply
PART_MAGIC = "VSTOR BACKUP PART v1"
LABEL_MAGIC = "VSTOR TAPE LABEL v1"
MANIFEST = "VSTOR-MANIFEST.json"
_AD = b"VSTOR-RECORD-v1"


class Hasher(Protocol):
    """What the stream and the tape writer need of a sha256: hashlib's, or overlap.py's."""

    def update(self, data: bytes | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


# -- text headers ----------------------------------------------------------------------------------
def _printable(value: object) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in str("" if value is None else value))


def _encode_text(magic: str, fields: dict, recipe: list[str]) -> bytes:
    doc = json.dumps(fields, separators=(",", ":"), sort_keys=True, ensure_ascii=True)
    lines = [magic, f"format={FORMAT_VERSION}"]
    lines += [f"{k}={_printable(v)}" for k, v in fields.items() if k != "volumes"]
    lines += [f"volume={_printable(v['name'])} size={int(v['size'])}" for v in fields.get("volumes", [])]
    lines += [f"json={doc}", f"xxh3={xxhash.xxh3_64_hexdigest(doc.encode())}", "", *recipe, "\f"]
    text = ("\n".join(lines) + "\n").encode("ascii")
    if len(text) > RECORD:
        raise UsageError(f"the header needs {len(text)} bytes, more than one {RECORD}-byte record (too many volumes)")
    return text + bytes(RECORD - len(text))


def _decode_text(raw: bytes, magic: str) -> dict:
    if len(raw) != RECORD or not raw.startswith(magic.encode() + b"\n"):
        raise FormatError(f"not a {magic!r} record ({len(raw)} bytes, starting {raw[:24]!r})")
    doc = digest = None
    for line in raw.split(b"\0", 1)[0].split(b"\n"):
        if line.startswith(b"json="):
            doc = line[5:]
        elif line.startswith(b"xxh3="):
            digest = line[5:].decode("ascii", "replace")
    if doc is None or digest != xxhash.xxh3_64_hexdigest(doc):
        raise FormatError(f"{magic!r} record: the JSON line is missing or fails its xxh3 checksum")
    try:
        return json.loads(doc)
    except ValueError as e:
        raise FormatError(f"{magic!r} record: bad JSON ({e})") from None


def _part_recipe(h: PartHeader) -> list[str]:
    dd = "dd if=TAPE bs=256k skip=1"
    out = [f"To restore job {h.job} part {h.part} without vstor (TAPE = the non-rewinding device, e.g. /dev/nst0;",
           "FILE = the tape file this header starts, as counted by mt from the beginning of the tape):"]
    if h.key_id is not None:
        return out + [f"  encrypted: restore with vstor backup restore (key id {h.key_id}; AES-256-GCM sealed blocks)"]
    out.append(f"  mt -f TAPE rewind; mt -f TAPE fsf FILE; {dd} | tar -xSf -")
    out += ["A job that spans cartridges has one part per cartridge (part=0, 1, ...): concatenate the",
            f"parts' '{dd}' outputs in part order into one tar, e.g. for each part in order:",
            f"  {{ mt -f TAPE rewind; mt -f TAPE fsf FILE; {dd}; }} >> job.tar   # then: tar -xSf job.tar"]
    if h.part:
        out.append(f"This is part {h.part}: it continues part {h.part - 1} and does not stand alone.")
    if h.level != "full":
        out += [f"Level {h.level}: each extracted image holds only the extents changed since job {h.base_job};",
                "the rest are holes. Merge it onto the restored base with vstor backup restore (tar cannot)."]
    return out


class _TextRecord:
    """encode/decode of a one-record text header; subclasses are dataclasses with a MAGIC line."""

    MAGIC: ClassVar[str]

    def _recipe(self) -> list[str]:
        return []

    def encode(self) -> bytes:
        return _encode_text(self.MAGIC, asdict(self), self._recipe())  # type: ignore[call-overload]

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        """The record ``raw`` holds; it must be exactly the encoding of its checksummed JSON, so
        damage to the readable lines, the recipe or the padding is caught as well."""
        try:
            obj = cls(**_decode_text(raw, cls.MAGIC))
            same = obj.encode() == raw
        except (TypeError, ValueError, KeyError) as e:
            raise FormatError(f"{cls.MAGIC!r} record: fields do not match this version ({e})") from None
        if not same:
            raise FormatError(f"{cls.MAGIC!r} record: the text differs from its checksummed JSON (damaged)")
        return obj


@dataclass
class PartHeader(_TextRecord):
    """The first block of every tape file holding a job part."""

    MAGIC: ClassVar[str] = PART_MAGIC

    job: int
    part: int
    policy: str
    level: str
    source: str
    snapshot: str
    created: float
    base_job: int | None
    key_id: int | None
    volumes: list[dict] = field(default_factory=list)
    pool_uuid: str = ""
    barcode: str = ""

    def _recipe(self) -> list[str]:
        return _part_recipe(self)


@dataclass
class TapeLabel(_TextRecord):
    """Tape file 0 of every cartridge vstor writes."""

    MAGIC: ClassVar[str] = LABEL_MAGIC
    barcode: str
    pool_uuid: str
    created: float

    def _recipe(self) -> list[str]:
        return ["A vstor backup cartridge; later tape files are job parts."]


# -- the pax stream --------------------------------------------------------------------------------
@dataclass
class VolumeSource:
    name: str
    size: int
    extents: list[tuple[int, int]]  # (offset, length), sorted, non-overlapping
    read: Callable[[int, int], bytes | memoryview]


def pax_stream(source: str, volumes: list[VolumeSource], meta: dict[str, str],
               manifest: dict | None = None, new_hash: Callable[[], Hasher] = hashlib.sha256
               ) -> Iterator[bytes | memoryview]:
    """The archive of ``volumes`` as bytes-like pieces; the total is a multiple of 512. ``manifest``,
    if given, is filled with the manifest the archive ends with (each image's sums), so the
    writer need not hash the data a second time. ``new_hash`` makes each image's sha256 (one
    with hashlib's update and hexdigest: a job's overlaps its I/O, overlap.py)."""
    if manifest is None:
        manifest = {}
    manifest.update({"format": "vstor-backup", "version": FORMAT_VERSION, "source": source, "meta": dict(meta),
                     "volumes": []})
    for v in volumes:
        extents = ts.aligned(v.name, v.size, v.extents)
        smap = ts.sparse_map(v.size, extents)
        data = sum(n for _, n in extents)
        pax = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": f"{source}/{v.name}.img",
               "GNU.sparse.realsize": str(v.size), "VSTOR.job": str(meta.get("job", "")), "VSTOR.volume": v.name}
        pax.update({f"VSTOR.{k}": str(val) for k, val in meta.items()})
        yield ts.header(f"{source}/GNUSparseFile.0/{v.name}.img", len(smap) + data, pax)
        yield smap
        h = new_hash()
        for off, n in extents:
            for pos in range(off, off + n, PIECE):
                piece = v.read(pos, min(PIECE, off + n - pos))
                if len(piece) != min(PIECE, off + n - pos):
                    raise UsageError(f"volume {v.name}: read({pos}) returned {len(piece)} bytes")
                h.update(piece)
                yield piece
        yield ts.pad(len(smap) + data)
        manifest["volumes"].append({"name": v.name, "size": v.size, "extents": len(extents),
                                    "bytes": data, "sha256": h.hexdigest()})
    doc = json.dumps(manifest, indent=1, sort_keys=True).encode()
    yield ts.header(f"{source}/{MANIFEST}", len(doc), {"VSTOR.job": str(meta.get("job", ""))})
    yield doc + ts.pad(len(doc))
    yield bytes(2 * ts.BLOCK)


def read_stream(chunks: Iterator[bytes], apply: Callable[[str, int, bytes], None]) -> dict:
    """Parse a :func:`pax_stream` archive; ``apply(volume, offset, data)`` per extent piece.

    Returns the manifest. ``apply`` may already have seen the data of a member whose checksum then
    fails: a CorruptData means the whole restore is void.
    """
    return ts.read_archive(chunks, apply, MANIFEST, PIECE)


# -- record sealing --------------------------------------------------------------------------------
def _nonce_ad(job: int, part: int, index: int) -> tuple[bytes, bytes]:
    if not (0 <= job < 1 << 40 and 0 <= part < 1 << 16 and 0 <= index < 1 << 40):
        raise UsageError(f"record (job {job}, part {part}, index {index}) is out of the nonce's range")
    nonce = job.to_bytes(5, "big") + part.to_bytes(2, "big") + index.to_bytes(5, "big")
    return nonce, _AD + struct.pack(">QQQ", job, part, index)


def seal_record(key: bytes, job: int, part: int, index: int, record: bytes) -> bytes:
    """``record`` encrypted and authenticated for its place (16 bytes longer)."""
    nonce, ad = _nonce_ad(job, part, index)
    return AESGCM(key).encrypt(nonce, record, ad)


def open_record(key: bytes, job: int, part: int, index: int, sealed: bytes) -> bytes:
    """The record sealed for exactly this (job, part, index); CorruptData otherwise."""
    nonce, ad = _nonce_ad(job, part, index)
    try:
        return AESGCM(key).decrypt(nonce, sealed, ad)
    except Exception:
        raise CorruptData(f"job {job} part {part} record {index} fails authentication (damaged, moved or "
                          "wrong key)") from None
