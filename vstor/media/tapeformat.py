"""The cartridge file format (version 1). Pure: no I/O.

docs/formats.md "Tape cartridge" is the authoritative description. A cartridge is one file,
``POOL/media/LIB/BARCODE.tape``: a 64-byte header, then objects back to back::

    object header (64 bytes) | stored payload (stored bytes; none for a filemark)

An object is a data block or a filemark; object numbers count both (mhvtl's convention),
and EOD is implied after the last valid object. Each header carries an xxh3-64 over itself
and the stored payload, so a torn or damaged tail is found at load and cut: the
cartridge then ends at the last whole object. WORM cartridges also chain a SHA-256 over every
object (``chain = sha256(previous chain + header[0:24] + stored)``), so any change to an
earlier block breaks every later link: tamper-evident, checked by ``media show --verify``.

The file header's bytes 32..56 hold the flush mark (``pack_mark``): the end of the file and
the object count at the last flush, written only after that flush's sync returned, with an
xxh3-64 of its own. Whatever mark is on the medium is therefore at or behind what is durable,
and a load needs to check the payloads only after it (cartridge.py). Cartridges written before
the mark, and a mark that fails its checksum, read as "no mark": every object is checked.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import xxhash

from vstor.errors import FormatError

VERSION = 1
FILE_MAGIC = b"VSTTAPE1"
FILE_HEADER = struct.Struct("<8sHH16s36x")  # magic version flags barcode(16, NUL padded) pad -> 64
FILE_HEADER_SIZE = 64
OBJ_MAGIC = b"VTOB"
OBJ_HEADER = struct.Struct("<4sBBHQIIQ32s")  # magic kind flags partition number length stored csum chain
OBJ_HEADER_SIZE = 64
COVERED = 24  # the checksum and the chain cover header[0:24] (magic .. stored) and the payload
MARK = struct.Struct("<QQQ")  # the flush mark: end, objects, xxh3-64 of file header[0:32] + end + objects
MARK_AT = 32  # its offset in the file header (inside FILE_HEADER's padding: version 1 is unchanged)
KIND_DATA, KIND_FILEMARK = 1, 2
OF_LZ4, OF_AES = 1, 2
ZERO_CHAIN = bytes(32)


@dataclass(frozen=True, slots=True)
class ObjHeader:
    kind: int
    flags: int
    partition: int
    number: int  # object number (blocks and filemarks)
    length: int  # logical bytes (0 for a filemark)
    stored: int  # payload bytes in the file
    csum: int
    chain: bytes


def pack_file_header(barcode: str) -> bytes:
    return FILE_HEADER.pack(FILE_MAGIC, VERSION, 0, barcode.encode()[:16])


def check_file_header(raw: bytes, barcode: str) -> None:
    if len(raw) < FILE_HEADER_SIZE:
        raise FormatError(f"cartridge {barcode} is shorter than its header")
    magic, version, _flags, code = FILE_HEADER.unpack_from(raw)
    if magic != FILE_MAGIC or version != VERSION:
        raise FormatError(f"cartridge {barcode} is not a version {VERSION} vstor cartridge")
    if code.rstrip(b"\0").decode(errors="replace") != barcode:
        raise FormatError(f"cartridge file of {barcode} holds barcode {code.rstrip(bytes(1))!r}")


def pack_mark(file_header: bytes, end: int, objects: int) -> bytes:
    """The flush mark for a cartridge whose file header is ``file_header``: its first ``end``
    bytes, ``objects`` objects, were durable when it was written (pwrite it at MARK_AT)."""
    body = struct.pack("<QQ", end, objects)
    return body + xxhash.xxh3_64_intdigest(file_header[:MARK_AT] + body).to_bytes(8, "little")


def unpack_mark(file_header: bytes) -> tuple[int, int] | None:
    """(end, objects) of the flush mark in a file header, or None (none written, or damaged)."""
    end, objects, check = MARK.unpack_from(file_header, MARK_AT)
    if xxhash.xxh3_64_intdigest(file_header[:MARK_AT] + file_header[MARK_AT : MARK_AT + 16]) != check:
        return None
    if end < FILE_HEADER_SIZE:
        return None
    return end, objects


def pack_obj(kind: int, flags: int, number: int, length: int, stored: bytes, prev_chain: bytes | None,
             partition: int = 0) -> bytes:
    """The header for an object; ``prev_chain`` None: no hash chain (not WORM)."""
    head = struct.pack("<4sBBHQII", OBJ_MAGIC, kind, flags, partition, number, length, len(stored))
    csum = xxhash.xxh3_64_intdigest(head + stored)
    chain = ZERO_CHAIN if prev_chain is None else hashlib.sha256(prev_chain + head + stored).digest()
    return OBJ_HEADER.pack(OBJ_MAGIC, kind, flags, partition, number, length, len(stored), csum, chain)


def unpack_obj(raw: bytes) -> ObjHeader:
    if len(raw) < OBJ_HEADER_SIZE:
        raise FormatError("object header cut short")
    magic, kind, flags, part, number, length, stored, csum, chain = OBJ_HEADER.unpack_from(raw)
    if magic != OBJ_MAGIC or kind not in (KIND_DATA, KIND_FILEMARK):
        raise FormatError("not an object header")
    return ObjHeader(kind, flags, part, number, length, stored, csum, chain)


def verify_obj(raw_header: bytes, h: ObjHeader, stored: bytes) -> None:
    if xxhash.xxh3_64_intdigest(raw_header[:COVERED] + stored) != h.csum:
        raise FormatError(f"object {h.number} fails its checksum")


def next_chain(prev: bytes, raw_header: bytes, stored: bytes) -> bytes:
    return hashlib.sha256(prev + raw_header[:COVERED] + stored).digest()
