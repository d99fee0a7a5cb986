"""How a byte range falls on fixed-size stripe objects. Pure.

The RADOS backend keeps a journal segment, a tape cartridge or an optical disc as objects of
one stripe size each (rados/backend.py, rados/files.py, rados/sparse.py); every read and write of a
range walks it stripe by stripe with :func:`stripe_spans`.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["stripe_spans"]


def stripe_spans(pos: int, length: int, stripe_bytes: int) -> Iterator[tuple[int, int, int, int]]:
    """(stripe, offset in the stripe, offset in the range, bytes) for each stripe that
    [pos, pos + length) touches, in order. A caller may stop early (a short read)."""
    at = 0
    while at < length:
        stripe, off = divmod(pos + at, stripe_bytes)
        n = min(length - at, stripe_bytes - off)
        yield stripe, off, at, n
        at += n
