"""Private tar-level helpers of :mod:`vstor.backup.media.tapefile`: pax/ustar headers, the GNU sparse 1.0
map, and the streaming reader of a backup archive. Its pieces (:class:`Input`, :func:`pax_records`,
:func:`read_sparse_map`) also read client streams back (client/array/listing.py).

Guarantees of :func:`read_archive`: it accepts any chunking, consumes the stream strictly in order
with memory bounded by one piece plus one chunk, hands every extent to ``apply`` in pieces of at
most ``piece_max`` bytes, and checks each sparse member's sha256 and byte count against the
manifest. A malformed first member is a FormatError (not this format); later damage, a cut stream
or a checksum mismatch is CorruptData.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable, Iterator

from vstor.errors import CorruptData, FormatError, UsageError

BLOCK = 512


def pad(n: int) -> bytes:
    return bytes(-n % BLOCK)


def header(name: str, size: int, pax: dict[str, str]) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime, ti.type = size, 0o600, 0, tarfile.REGTYPE
    ti.pax_headers = pax
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")  # adds a pax size key above 8 GiB


def aligned(name: str, size: int, extents: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The extents widened to 512-byte boundaries (capped at the size) and merged.

    GNU tar stores every extent padded to 512 bytes and Python's tarfile does not, so only aligned
    extents (an unaligned end at the size is fine) read the same in both.
    """
    out: list[list[int]] = []
    for off, n in extents:
        if off < (out[-1][1] if out else 0) or n < 0 or off + n > size:
            raise UsageError(f"volume {name}: extents must be sorted, non-overlapping and within {size} bytes")
        if n:
            lo, hi = off - off % BLOCK, min(size, off + n + -(off + n) % BLOCK)
            if out and lo <= out[-1][1]:
                out[-1][1] = hi
            else:
                out.append([lo, hi])
    return [(lo, hi - lo) for lo, hi in out]


def sparse_map(size: int, extents: list[tuple[int, int]]) -> bytes:
    pairs = list(extents)
    end = pairs[-1][0] + pairs[-1][1] if pairs else 0
    if end < size or not pairs:
        pairs.append((size, 0))  # as GNU tar: a final empty extent at realsize
    text = "\n".join(str(x) for x in [len(pairs), *(y for p in pairs for y in p)]) + "\n"
    return text.encode() + pad(len(text))


def read_archive(chunks: Iterator[bytes], apply: Callable[[str, int, bytes], None], manifest_name: str,
                 piece_max: int) -> dict:
    """The manifest of the archive in ``chunks``, after every extent went to ``apply``."""
    pax: dict[str, str] = {}
    inp, seen, manifest = Input(chunks), [], None
    bad = _Bad()
    while True:
        raw = inp.take(BLOCK)
        if not any(raw):
            inp.take(BLOCK)
            break
        try:
            ti = tarfile.TarInfo.frombuf(raw, "utf-8", "surrogateescape")
        except tarfile.HeaderError as e:
            raise bad(f"block at byte {inp.done - BLOCK} is not a tar header ({e})") from None
        if raw[257:265] != b"ustar\x0000":
            raise bad(f"member {ti.name!r} is not a POSIX ustar/pax header")
        size = int(pax.get("size", ti.size))
        if ti.type == tarfile.XHDTYPE:
            pax = pax_records(inp.take(size), bad)
            inp.take(-size % BLOCK)
            continue
        regular = ti.type in tarfile.REGULAR_TYPES
        if regular and pax.get("GNU.sparse.major") == "1" and "VSTOR.volume" in pax:
            seen.append(_read_sparse(inp, pax["VSTOR.volume"], size, apply, bad, piece_max))
        elif regular and pax.get("path", ti.name).endswith("/" + manifest_name) and manifest is None:
            try:
                manifest = json.loads(inp.take(size))
            except ValueError as e:
                raise bad(f"the manifest is not JSON ({e})") from None
            inp.take(-size % BLOCK)
        else:
            raise bad(f"unexpected member {ti.name!r} (type {ti.type!r})")
        bad.first, pax = False, {}
    if not isinstance(manifest, dict):
        raise bad("the archive ends without its manifest")
    want = [(v.get("name"), v.get("sha256"), v.get("bytes")) for v in manifest.get("volumes", [])]
    if want != seen:
        raise CorruptData(f"the volume images do not match the manifest: read {seen}, manifest {want}")
    return manifest


class _Bad:
    """The error for a malformed stream: FormatError before the first member, CorruptData after."""

    first = True

    def __call__(self, msg: str) -> Exception:
        return (FormatError if self.first else CorruptData)(f"backup stream: {msg}")


class Input:
    """Exact reads over an iterator of chunks of any size."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.it, self.buf, self.off, self.done = iter(chunks), bytearray(), 0, 0

    def take(self, n: int) -> bytes:
        while len(self.buf) - self.off < n:
            chunk = next(self.it, None)
            if chunk is None:
                raise (FormatError if self.done == 0 and not self.buf else CorruptData)(
                    f"backup stream is cut short at byte {self.done + len(self.buf) - self.off}")
            del self.buf[: self.off]
            self.off = 0
            self.buf += chunk
        out = bytes(self.buf[self.off : self.off + n])
        self.off += n
        self.done += n
        return out


def pax_records(data: bytes, bad: Callable[[str], Exception]) -> dict[str, str]:
    """A pax extended header's records as {key: value} (values with surrogate escapes for non-UTF-8)."""
    out, pos = {}, 0
    try:
        while pos < len(data) and data[pos]:
            sp = data.index(b" ", pos)
            n = int(data[pos:sp])
            key, eq, value = data[sp + 1 : pos + n - 1].partition(b"=")
            if not eq or n <= 0:
                raise ValueError("no '=' in a record")
            out[key.decode()] = value.decode("utf-8", "surrogateescape")
            pos += n
    except ValueError as e:
        raise bad(f"bad pax extended header ({e})") from None
    return out


def read_sparse_map(inp: Input, size: int, bad: Callable[[str], Exception], what: str) -> tuple[bytes, list[int]]:
    """A GNU sparse 1.0 member's map, read from ``inp``: its bytes (NUL padding included) and the
    numbers after the count (offset, length, offset, length, ...)."""
    text = b""
    while True:  # the map: count, then offset and length per extent, NUL-padded to 512
        text += inp.take(BLOCK)
        nums = text.split(b"\n")[:-1]
        try:
            if nums and int(nums[0]) < 0:
                raise ValueError("a negative count")
            if nums and len(nums) >= 1 + 2 * int(nums[0]):
                return text, [int(x) for x in nums[1 : 1 + 2 * int(nums[0])]]
        except ValueError:
            raise bad(f"{what}: the sparse map is not numbers") from None
        if len(text) >= size:
            raise bad(f"{what}: the sparse map is longer than the member")


def _read_sparse(inp: Input, volume: str, size: int, apply: Callable[[str, int, bytes], None], bad: _Bad,
                 piece_max: int) -> tuple[str, str, int]:
    text, pairs = read_sparse_map(inp, size, bad, f"volume {volume}")
    h, data = hashlib.sha256(), 0
    for off, n in zip(pairs[::2], pairs[1::2], strict=True):
        for pos in range(off, off + n, piece_max):
            piece = inp.take(min(piece_max, off + n - pos))
            h.update(piece)
            apply(volume, pos, piece)
        data += n
    if len(text) + data != size:
        raise bad(f"volume {volume}: map and extents hold {len(text) + data} bytes, the member {size}")
    inp.take(-size % BLOCK)
    return volume, h.hexdigest(), data
