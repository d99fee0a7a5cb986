"""Frame codec: zero detection, lz4, AES-256-GCM and checksums. Pure: bytes in, bytes out.

Encoding a frame (up to FRAME_SIZE bytes):
  1. an all-zero frame is stored as nothing (flag FF_ZERO);
  2. with compression on, lz4 is kept only if it saves at least 1/8 (borg's "only
     compress if the result actually is smaller"). After 8 frames in a row that did not,
     the next 64 are stored without trying (vstor/lz4gate.py: the early abort);
  3. with a key, AES-256-GCM encrypts it under a random 96-bit nonce. The associated
     data binds the frame to its identity (pool, volume, volume offset) and version
     (record seq, segment, position, frame index), so a frame copied to another place
     or replaced by an older copy fails authentication;
  4. the stored bytes get an xxh3-64 checksum, so integrity is checked without the key
     (pool check, recovery) and corruption is told apart from a wrong key.
lz4 and AES release the GIL, so FUSE threads can overlap this work.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Sequence

import lz4.block
import xxhash
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vstor.errors import CorruptData
from vstor.lz4gate import Lz4Gate
from vstor.store.journal.format import FF_AES, FF_LZ4, FF_ZERO, FRAME_SIZE, FrameEntry

ZERO_FRAME = bytes(FRAME_SIZE)
NO_NONCE = bytes(12)
ZERO_ENTRY = FrameEntry(0, FF_ZERO, 0, NO_NONCE)
_AD = struct.Struct("<16sIBQQQQH")
KEY_BYTES = 32


def derive_key(key_material: bytes, pool_uuid: bytes, purpose: bytes) -> bytes:
    """HKDF-SHA256 of the key file's bytes, salted with the pool's uuid."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=pool_uuid, info=b"vstor " + purpose).derive(
        key_material
    )


def pair_key_check(key_material: bytes | None) -> str:
    """A pool-independent proof of the key, so two arrays can tell that they hold the same key
    without revealing it (replication of encrypted groups). "" without a key."""
    if not key_material:
        return ""
    return hmac.new(key_material, b"vstor pair key check v1", hashlib.sha256).hexdigest()


def key_check_value(key_material: bytes, pool_uuid: bytes) -> str:
    """A value stored in the superblock that proves a key right without revealing it."""
    check_key = derive_key(key_material, pool_uuid, b"key check v1")
    return hmac.new(check_key, b"vstor key check", hashlib.sha256).hexdigest()


def frame_ad(pool_uuid: bytes, volume: int, rtype: int, seq: int, offset: int, segno: int, pos: int,
             index: int) -> bytes:
    return _AD.pack(pool_uuid, volume, rtype, seq, offset, segno, pos, index)


def first_bad_stored_frame(raw: bytes | memoryview, offs: Sequence[int], csums: Sequence[int], f0: int,
                           f1: int) -> int | None:
    """For frames f0..f1 that are all stored as is (no flag; CachedRecord.raw_csums), read in
    one piece as ``raw``: None if every one has its length and checksum, else the first bad
    frame. The checks of :meth:`FrameCodec.decode`, in one pass instead of one call per frame."""
    if f0 == f1:  # one frame (every read of a small record): no list to build
        return None if len(raw) == offs[f0 + 1] - offs[f0] and xxhash.xxh3_64_intdigest(raw) == csums[f0] else f0
    start = offs[f0]
    view = memoryview(raw)
    got = [xxhash.xxh3_64_intdigest(view[offs[i] - start : offs[i + 1] - start]) for i in range(f0, f1 + 1)]
    if len(raw) == offs[f1 + 1] - start and got == list(csums[f0 : f1 + 1]):
        return None
    return next((f0 + k for k, c in enumerate(got) if c != csums[f0 + k]), f1)


class FrameCodec:
    def __init__(self, pool_uuid: bytes, compress: bool, key_material: bytes | None) -> None:
        self.pool_uuid = pool_uuid
        self.compress = compress
        self.lz4 = Lz4Gate(saving_divisor=8)  # kept only if it saves 1/8 (borg's rule); early abort
        self._aead = AESGCM(derive_key(key_material, pool_uuid, b"data key v1")) if key_material else None
        self.verify_only = False  # pool check without a key: check checksums, skip decryption

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    def encode(self, data: bytes | memoryview, ad: tuple[int, int, int, int, int, int] | None = None,
               gated: bool = True) -> tuple[list[FrameEntry], list[bytes | memoryview]]:
        """Cut ``data`` into frames and encode each. ``ad`` is (volume, rtype, seq, offset, segno,
        pos) and is required when the codec encrypts. ``gated`` False tries lz4 on every frame
        whatever the early abort's state, and leaves that state alone: GC and compaction move
        data that was compressed before, and host writes must not decide how it is stored.
        Returns the table entries and stored bytes."""
        view = memoryview(data)
        if len(view) <= FRAME_SIZE:  # one frame: most host writes
            entry, body = self._encode_frame(view, ad, 0, gated)
            return [entry], [] if body is None else [body]
        entries: list[FrameEntry] = []
        stored: list[bytes | memoryview] = []
        for index, start in enumerate(range(0, len(view), FRAME_SIZE)):
            entry, body = self._encode_frame(view[start : start + FRAME_SIZE], ad, index, gated)
            entries.append(entry)
            if body is not None:
                stored.append(body)
        return entries, stored

    def _encode_frame(self, frame: memoryview, ad: tuple[int, int, int, int, int, int] | None, index: int,
                      gated: bool = True) -> tuple[FrameEntry, bytes | memoryview | None]:
        """One frame's table entry and stored bytes (None for an all-zero frame)."""
        if ZERO_FRAME.startswith(frame):  # a memcmp: == on memoryviews compares byte by byte
            return ZERO_ENTRY, None
        flags = 0
        body: bytes | memoryview = frame
        if self.compress:
            packed = self.lz4.compress(frame) if gated else self.lz4.compress_always(frame)
            if packed is not None:
                body, flags = packed, FF_LZ4
        nonce = NO_NONCE
        if self._aead is not None:
            if ad is None:
                raise ValueError("encrypting codec needs the frame's associated data")
            nonce = os.urandom(12)
            body = self._aead.encrypt(nonce, bytes(body), frame_ad(self.pool_uuid, *ad, index))
            flags |= FF_AES
        return FrameEntry(len(body), flags, xxhash.xxh3_64_intdigest(body), nonce), body

    def decode(self, entry: FrameEntry, body: bytes | memoryview, logical_len: int,
               ad: tuple[int, int, int, int, int, int] | None, index: int, where: str) -> bytes | memoryview:
        """Verify and decode one frame. Raises CorruptData naming ``where`` on any mismatch."""
        if entry.flags & FF_ZERO:
            return ZERO_FRAME[:logical_len]
        if len(body) != entry.stored_len or xxhash.xxh3_64_intdigest(body) != entry.csum:
            raise CorruptData(f"checksum mismatch in {where}")
        if entry.flags & FF_AES:
            if self._aead is None and self.verify_only:
                return ZERO_FRAME[:logical_len]  # checksum verified above; contents not needed
            if self._aead is None or ad is None:
                raise CorruptData(f"{where} is encrypted but the pool has no key loaded")
            try:
                body = self._aead.decrypt(entry.nonce, bytes(body), frame_ad(self.pool_uuid, *ad, index))
            except InvalidTag:
                raise CorruptData(f"authentication failed for {where} (tampered, misplaced or stale)") from None
        if entry.flags & FF_LZ4:
            try:
                body = lz4.block.decompress(body, uncompressed_size=logical_len)
            except lz4.block.LZ4BlockError:
                raise CorruptData(f"lz4 data invalid in {where}") from None
        if len(body) != logical_len:
            raise CorruptData(f"frame length mismatch in {where}")
        return body
