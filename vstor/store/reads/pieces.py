"""The small pieces of a large read served in one pass: an aged volume's 1 MiB read is ~95
pieces, most of them whole records of one 4 KiB frame stored as is (the random overwrites
that aged it).

The general path (path.py) served each through the small-read fast path (small.py), about a
dozen Python calls a piece: the header cache's entry, its fields, the checks, the page-cache
read, the checksum. Here one loop takes every piece that is a whole record of one frame with
no block sums, stored as is, whose packed header entry the cache holds; the journal reads them
all from the page cache in one call (``Journal.pread_cached_many``), straight into the
caller's buffer, and each is verified against its frame checksum there. Anything else is
returned to the caller, which reads it as before: a piece of a larger record, an entry not
cached or built, a compressed or encrypted frame, data not in the page cache, a short read or
a checksum that fails. So, like the fast path, this never waits, never returns unverified
bytes and never decides an error: the general path reads such a piece again and reports it.
"""

from __future__ import annotations

from collections.abc import Callable

from xxhash import xxh3_64_intdigest

from vstor.store.journal.format import FRAME_ENTRY_SIZE, LOC_SHIFT, MAX_SEGMENT_SIZE, RECORD_HEADER_SIZE, SUMS_VERSION
from vstor.store.journal.hcache import ONE_FRAME, Entry
from vstor.store.reads.small import DATA_RECORDS

__all__ = ["WHOLE_ENTRY", "serve_whole"]

WHOLE_ENTRY = RECORD_HEADER_SIZE + FRAME_ENTRY_SIZE  # a packed entry of one frame with no block sums
_POS = MAX_SEGMENT_SIZE - 1  # a location's position bits (format.loc_pos)

Piece = tuple[int, int, int]  # (start, end, location) of a volume map's lookup


def serve_whole(peek: Callable[[int], Entry | None],
                pread_cached_many: Callable[[list[tuple[int, int, memoryview]]], list[int]],
                lineage: tuple[int, ...], offset: int, view: memoryview, pieces: list[Piece]) -> list[Piece]:
    """Fill ``view`` (which covers [offset, offset+len(view))) with each of ``pieces`` that is
    a whole cached record of one frame stored as is, read from the page cache and verified
    against its checksum; return the pieces not served, for the caller to read. ``peek``: the
    header cache's entry of a location as kept (HeaderCache.peek); ``pread_cached_many``: the
    journal's (SegmentReader.pread_cached_many). A piece's bytes in ``view`` are unverified
    until served: the caller must read every piece returned."""
    reads: list[tuple[int, int, memoryview]] = []
    csums: list[int] = []
    taken: list[Piece] = []
    rest: list[Piece] = []
    unpack = ONE_FRAME.unpack_from
    for piece in pieces:
        s, e, loc = piece
        entry = peek(loc)
        if type(entry) is bytes and len(entry) == WHOLE_ENTRY:
            (_m, ver, rtype, nframes, _g, volume, _q, roff, length, _st, _t, _c,
             stored_len, flags, _r, csum, _n) = unpack(entry)
            if (roff == s and length == e - s and nframes == 1 and not flags and stored_len == length
                    and ver != SUMS_VERSION and volume in lineage and rtype in DATA_RECORDS):
                reads.append((loc >> LOC_SHIFT, (loc & _POS) + WHOLE_ENTRY, view[s - offset : e - offset]))
                csums.append(csum)
                taken.append(piece)
                continue
        rest.append(piece)
    if not reads:
        return rest
    missed = set(pread_cached_many(reads))
    for i, csum in enumerate(csums):
        if i in missed or xxh3_64_intdigest(reads[i][2]) != csum:
            rest.append(taken[i])
    return rest
