"""Checkpoints: a durable snapshot of the volume table, group sequences and chunk maps,
taken at a journal position, so that recovery replays only the journal after it.

Two copies, ``POOL/meta/checkpoint.a`` and ``POOL/meta/checkpoint.b``, written alternately
(odd generations to ``a``, even ones to ``b``), each replaced atomically through the pool's
backend (vstor/store/backend/: a file replaced by rename, or one RADOS write_full)::

    header (96 bytes): magic "VSTCKP01", version u32, flags u32, pool uuid 16s,
        generation u64, journal segno u64, journal pos u64, next segno u64,
        meta length u64, body length u64, body xxh3 u64, header xxh3 u64
    body: meta JSON (meta length bytes), then the chunk maps of every volume and snapshot
          (mapstore.py: distinct leaves once, then each map as references to them)

Guarantees:

* Every record before (segno, pos) is durable and reflected in the body, so a copy is
  written only after a journal sync.
* ``next segno`` is the lowest segment number never used when the copy was written; a
  segment number below it is never given to a new segment again.
* The journal is kept from the older copy's position on (maintenance.py), so if the newest
  copy is damaged, the older one plus the journal after it gives exactly the same state.
* A damaged copy is never read as a valid one: both checksums must match (xxh3-64).

``meta/checkpoint`` (one copy, before two were kept) is still read as a candidate.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import xxhash

from vstor.errors import FormatError
from vstor.store.backend.base import PoolBackend

MAGIC = b"VSTCKP01"
VERSION = 4  # 2: shared leaves and the snapshot catalog; 3: shared overlay lists; 4: leaf origins
READS = (3, 4)  # version 3 is read as a version 4 without leaf origins
HEADER = struct.Struct("<8sII16sQQQQQQQ")  # 88 bytes + 8-byte header checksum
HEADER_SIZE = HEADER.size + 8
COPIES = ("checkpoint.a", "checkpoint.b")  # generation odd -> a, even -> b
LEGACY = "checkpoint"  # the single copy of pools made before two were kept
META = "meta/"  # the copies are the blobs META + name


@dataclass
class CheckpointData:
    generation: int
    segno: int
    pos: int
    next_segno: int
    meta: dict
    maps: bytes = b""  # mapstore.dump_maps of the maps named in meta["maps"]
    version: int = VERSION


@dataclass
class CheckpointSet:
    """What the checkpoint files hold: the valid copies, newest first, and what is wrong
    with the others (file name -> why)."""

    valid: list[tuple[str, CheckpointData]] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def newest(self) -> CheckpointData | None:
        return self.valid[0][1] if self.valid else None

    @property
    def older(self) -> CheckpointData | None:
        return self.valid[1][1] if len(self.valid) > 1 else None

    @property
    def both_valid(self) -> bool:
        return all(any(n == name for n, _ck in self.valid) for name in COPIES)

    def problems(self) -> list[str]:
        out = [f"checkpoint copy meta/{name} is damaged: {why}" for name, why in sorted(self.damaged.items())]
        out += [f"checkpoint copy meta/{name} is missing" for name in self.missing]
        return out


def copy_name(generation: int) -> str:
    return COPIES[0] if generation % 2 else COPIES[1]


def encode_checkpoint(pool_uuid: bytes, ck: CheckpointData) -> bytes:
    meta_bytes = json.dumps(ck.meta, sort_keys=True).encode()
    body = meta_bytes + ck.maps
    head = HEADER.pack(MAGIC, VERSION, 0, pool_uuid, ck.generation, ck.segno, ck.pos, ck.next_segno,
                       len(meta_bytes), len(body), xxhash.xxh3_64_intdigest(body))
    head += struct.pack("<Q", xxhash.xxh3_64_intdigest(head))
    return head + body


def write_checkpoint(backend: PoolBackend, pool_uuid: bytes, ck: CheckpointData, both: bool = False) -> int:
    """Write ``ck`` to the copy its generation selects (atomic replace, durable), and to
    the other copy too when ``both``. Returns the bytes of one copy."""
    raw = encode_checkpoint(pool_uuid, ck)
    names = COPIES if both else (copy_name(ck.generation),)
    for name in names:
        backend.put(META + name, raw)
    if backend.exists(META + LEGACY):  # superseded once both new copies exist
        if all(backend.exists(META + n) for n in COPIES):
            backend.delete(META + LEGACY)
    return len(raw)


def decode_checkpoint(raw: bytes, pool_uuid: bytes, path: str) -> CheckpointData:
    """Parse and verify one copy; FormatError says what is wrong with it."""
    if len(raw) < HEADER_SIZE:
        raise FormatError(f"checkpoint {path} is truncated")
    (hcsum,) = struct.unpack_from("<Q", raw, HEADER.size)
    if xxhash.xxh3_64_intdigest(raw[: HEADER.size]) != hcsum:
        raise FormatError(f"checkpoint {path} header fails its checksum")
    magic, ver, _flags, uuid, gen, segno, pos, next_segno, meta_len, body_len, body_csum = HEADER.unpack_from(raw)
    if magic != MAGIC or ver not in READS:
        raise FormatError(f"checkpoint {path} has format version {ver}; this vstor reads versions "
                          f"{', '.join(map(str, READS))}")
    if uuid != pool_uuid:
        raise FormatError(f"checkpoint {path} belongs to another pool")
    body = memoryview(raw)[HEADER_SIZE:]
    if len(body) != body_len or xxhash.xxh3_64_intdigest(body) != body_csum:
        raise FormatError(f"checkpoint {path} body fails its checksum")
    try:
        meta = json.loads(bytes(body[:meta_len]))
    except ValueError as e:  # only a bug can get here: the checksum matched
        raise FormatError(f"checkpoint {path} meta is not JSON: {e}") from None
    return CheckpointData(gen, segno, pos, next_segno, meta, bytes(body[meta_len:]), ver)


def read_checkpoints(backend: PoolBackend, pool_uuid: bytes) -> CheckpointSet:
    """Read every copy (and the legacy single file), newest valid generation first."""
    out = CheckpointSet()
    found: list[tuple[str, CheckpointData]] = []
    legacy_present = False
    for name in (*COPIES, LEGACY):
        path = backend.where(META + name)
        try:
            raw = backend.get(META + name)
            legacy_present = legacy_present or name == LEGACY
        except FileNotFoundError:
            if name != LEGACY:
                out.missing.append(name)
            continue
        except OSError as e:
            out.damaged[name] = f"cannot be read: {e.strerror}"
            continue
        try:
            found.append((name, decode_checkpoint(raw, pool_uuid, path)))
        except FormatError as e:
            out.damaged[name] = str(e)
    if legacy_present and not out.damaged.get(LEGACY):
        out.missing = []  # a pool from before two copies were kept has only the legacy one
    out.valid = sorted(found, key=lambda item: -item[1].generation)
    return out


def read_checkpoint(backend: PoolBackend, pool_uuid: bytes) -> CheckpointData | None:
    """The newest valid copy, or None when there is none (see :func:`read_checkpoints`)."""
    return read_checkpoints(backend, pool_uuid).newest
