"""Per-volume dirty bitmaps of a pair, and their file format. Pure logic plus one durable save
(a pool state file, vstor/store/backend/statefiles.py).

A bit covers GRANULE bytes of a volume. The primary folds into the bitmap every journal
record it cannot ship (suspended pair, journal overflow, after a forced takeover), and
frees the journal behind it; ``resync`` copies only the set bits. The invariant (reference
§3 (d)): every write acknowledged to a host is either in the journal after the pair's
consumer position or in this bitmap. So the bitmap is saved durably *before* the consumer
position moves past the records folded into it.

File ``meta/pairs/GROUP.bitmap`` (docs/formats.md "Dirty bitmap")::

    magic "VBMP" | version u16 | count u16 | then per volume:
        vid u32 | size u64 | granule u32 | stored u32 | lz4 frame of the bitmap bytes
    | xxh3-64 of everything before it (u64)
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING

import lz4.frame
import xxhash

from vstor.errors import FormatError

if TYPE_CHECKING:
    from vstor.store.backend.statefiles import PoolFiles

GRANULE = 64 * 1024
MAGIC = b"VBMP"
VERSION = 1
HEAD = struct.Struct("<4sHH")
ENTRY = struct.Struct("<IQII")
_NONZERO = re.compile(rb"[^\x00]+")


class DirtyBitmap:
    """Dirty granules of one volume."""

    def __init__(self, size: int, granule: int = GRANULE, bits: bytearray | None = None) -> None:
        self.size = size
        self.granule = granule
        nbits = -(-size // granule)
        self.bits = bits if bits is not None else bytearray(-(-nbits // 8))

    def mark(self, offset: int, length: int) -> None:
        """Mark [offset, offset+length) dirty (clipped to the volume)."""
        end = min(offset + length, self.size)
        if end <= offset:
            return
        a, b = offset // self.granule, (end - 1) // self.granule + 1  # granules [a, b)
        while a < b and a % 8:
            self.bits[a >> 3] |= 1 << (a & 7)
            a += 1
        full = (b - a) // 8
        if full:
            self.bits[a >> 3 : (a >> 3) + full] = b"\xff" * full
            a += full * 8
        while a < b:
            self.bits[a >> 3] |= 1 << (a & 7)
            a += 1

    def runs(self) -> Iterator[tuple[int, int]]:
        """Dirty byte ranges (start, end), ascending, adjacent granules merged."""
        start = -1
        last = -1
        for m in _NONZERO.finditer(self.bits):
            for byte_i in range(m.start(), m.end()):
                v = self.bits[byte_i]
                for bit in range(8):
                    if v >> bit & 1:
                        g = byte_i * 8 + bit
                        if start < 0 or g != last + 1:
                            if start >= 0:
                                yield start * self.granule, min((last + 1) * self.granule, self.size)
                            start = g
                        last = g
        if start >= 0:
            yield start * self.granule, min((last + 1) * self.granule, self.size)

    def dirty_bytes(self) -> int:
        return sum(e - s for s, e in self.runs())

    def merge(self, other: DirtyBitmap) -> None:
        if other.granule != self.granule:
            raise ValueError("bitmaps of different granules")
        n = min(len(self.bits), len(other.bits))
        merged = int.from_bytes(self.bits[:n], "little") | int.from_bytes(other.bits[:n], "little")
        nbits = -(-self.size // self.granule)
        merged &= (1 << min(nbits, n * 8)) - 1  # nothing past this volume's last granule
        self.bits[:n] = merged.to_bytes(n, "little")

    def clear(self) -> None:
        self.bits[:] = bytes(len(self.bits))

    def any(self) -> bool:
        return _NONZERO.search(self.bits) is not None


def encode(maps: dict[int, DirtyBitmap]) -> bytes:
    parts = [HEAD.pack(MAGIC, VERSION, len(maps))]
    for vid, bm in sorted(maps.items()):
        packed = lz4.frame.compress(bytes(bm.bits))
        parts += [ENTRY.pack(vid, bm.size, bm.granule, len(packed)), packed]
    body = b"".join(parts)
    return body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))


def decode(data: bytes, where: str) -> dict[int, DirtyBitmap]:
    if len(data) < HEAD.size + 8 or xxhash.xxh3_64_intdigest(data[:-8]) != struct.unpack("<Q", data[-8:])[0]:
        raise FormatError(f"dirty bitmap {where} fails its checksum; the changes it tracked are unknown, so "
                          "delete the pair and create it again (a full copy)")
    magic, version, count = HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise FormatError(f"{where} is not a version {VERSION} dirty bitmap")
    pos, out = HEAD.size, {}
    try:
        for _ in range(count):
            vid, size, granule, stored = ENTRY.unpack_from(data, pos)
            pos += ENTRY.size
            bits = bytearray(lz4.frame.decompress(data[pos : pos + stored]))
            if granule <= 0 or len(bits) != len(DirtyBitmap(size, granule).bits):
                raise ValueError("bitmap length does not match its volume")
            out[vid] = DirtyBitmap(size, granule, bits)
            pos += stored
    except (struct.error, RuntimeError, ValueError) as e:
        raise FormatError(f"dirty bitmap {where} is malformed ({e})") from None
    if pos != len(data) - 8:
        raise FormatError(f"dirty bitmap {where} has trailing bytes")
    return out


def save(files: PoolFiles, name: str, maps: dict[int, DirtyBitmap]) -> None:
    """Durable replace of the state file ``name`` of ``files`` (vstor/store/backend/statefiles.py);
    no bits at all removes the file."""
    if any(bm.any() for bm in maps.values()):
        files.write(name, encode(maps))
    else:
        files.remove(name)


def load(files: PoolFiles, name: str) -> dict[int, DirtyBitmap]:
    raw = files.read(name)
    return {} if raw is None else decode(raw, files.where(name))
