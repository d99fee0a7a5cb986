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

from vstor.store.journal.format import LOC_SHIFT, MAX_SEGMENT_SIZE
from vstor.store.journal.hcache import Entry, one_frame
from vstor.store.reads.small import DATA_RECORDS

__all__ = ["serve_whole"]

_POS = MAX_SEGMENT_SIZE - 1  # a location's position bits (format.loc_pos)

Piece = tuple[int, int, int]  # (start, end, location) of a volume map's lookup


def serve_whole(peek: Callable[[int], Entry | None],
                pread_cached_many: Callable[[list[tuple[int, int, memoryview]]], list[int]],
                lineage: tuple[int, ...], offset: int, view: memoryview,
                pieces: list[Piece]) -> tuple[list[Piece], set[int]]:
    """Fill ``view`` (which covers [offset, offset+len(view))) with each of ``pieces`` that is
    a whole cached record of one frame stored as is, read from the page cache and verified
    against its checksum. Returns the pieces not served, for the caller to read, and the
    locations among them that this pass took but could not serve (not cached, short, or
    failing the checksum): those the caller reads by waiting, in the general path, which
    reports damage; trying the page cache again first would only repeat the miss. ``peek``:
    the header cache's entry of a location as kept (HeaderCache.peek); ``pread_cached_many``:
    the journal's (SegmentReader.pread_cached_many). A piece's bytes in ``view`` are
    unverified until served: the caller must read every piece returned."""
    reads: list[tuple[int, int, memoryview]] = []
    csums: list[int] = []
    taken: list[Piece] = []
    rest: list[Piece] = []
    for piece in pieces:
        s, e, loc = piece
        entry = peek(loc)
        if isinstance(entry, bytes) and (fields := one_frame(entry)) is not None:  # packed, one frame
            rtype, volume, roff, length, csum, sums, as_is = fields
            if roff == s and length == e - s and as_is and not sums and volume in lineage and rtype in DATA_RECORDS:
                # the header and the table as written, then the data (as small.py reads it)
                reads.append((loc >> LOC_SHIFT, (loc & _POS) + len(entry), view[s - offset : e - offset]))
                csums.append(csum)
                taken.append(piece)
                continue
        rest.append(piece)
    unserved: set[int] = set()
    if not reads:
        return rest, unserved
    missed = set(pread_cached_many(reads))
    for i, csum in enumerate(csums):
        if i in missed or xxh3_64_intdigest(reads[i][2]) != csum:
            rest.append(taken[i])
            unserved.add(taken[i][2])
    return rest, unserved
