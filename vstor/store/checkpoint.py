"""Checkpoints: a durable snapshot of the volume table, group sequences and chunk maps,
taken at a journal position, so that recovery replays only the journal after it.

File ``POOL/meta/checkpoint``, replaced atomically::

    header (96 bytes): magic "VSTCKP01", version u32, flags u32, pool uuid 16s,
        generation u64, journal segno u64, journal pos u64, next segno u64,
        meta length u64, body length u64, body xxh3 u64, header xxh3 u64
    body: meta JSON (meta length bytes), then the chunk maps of every volume and snapshot
          (mapstore.py: distinct leaves once, then each map as references to them)

Invariant: every record before (segno, pos) is durable and reflected in the body, so the
checkpoint is written only after a journal sync.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

import xxhash

from vstor.durable import atomic_write
from vstor.errors import FormatError

MAGIC = b"VSTCKP01"
VERSION = 4  # 2: shared leaves and the snapshot catalog; 3: shared overlay lists; 4: leaf origins
READS = (3, 4)  # version 3 is read as a version 4 without leaf origins
HEADER = struct.Struct("<8sII16sQQQQQQQ")  # 88 bytes + 8-byte header checksum
HEADER_SIZE = HEADER.size + 8
NAME = "checkpoint"


@dataclass
class CheckpointData:
    generation: int
    segno: int
    pos: int
    next_segno: int
    meta: dict
    maps: bytes = b""  # mapstore.dump_maps of the maps named in meta["maps"]
    version: int = VERSION


def write_checkpoint(meta_dir: str, pool_uuid: bytes, ck: CheckpointData) -> int:
    meta_bytes = json.dumps(ck.meta, sort_keys=True).encode()
    body = meta_bytes + ck.maps
    head = HEADER.pack(MAGIC, VERSION, 0, pool_uuid, ck.generation, ck.segno, ck.pos, ck.next_segno,
                       len(meta_bytes), len(body), xxhash.xxh3_64_intdigest(body))
    head += struct.pack("<Q", xxhash.xxh3_64_intdigest(head))
    atomic_write(os.path.join(meta_dir, NAME), head + body)
    return len(head) + len(body)


def read_checkpoint(meta_dir: str, pool_uuid: bytes) -> CheckpointData | None:
    path = os.path.join(meta_dir, NAME)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
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
        raise FormatError(f"checkpoint {path} body fails its checksum; the pool metadata is damaged")
    meta = json.loads(bytes(body[:meta_len]))
    return CheckpointData(gen, segno, pos, next_segno, meta, bytes(body[meta_len:]), ver)
