"""Sweeps: the scattered records of an aged volume read ahead in journal order for a scan.
Pure: the detector and the plan; the thread that reads is sweeper.py.

A volume overwritten by small random writes holds, in every MiB, dozens of 4 KiB records
scattered over the part of the journal those writes were appended to. A sequential scan (fio,
``dd``, fsck, a backup job, ``qemu-img convert`` over NBD) then reads them one by one in the
volume's order, each a random read of the disk, and asking for each request's records at
once (``posix_fadvise(WILLNEED)``, path.py) still leaves the disk reading 4 KiB at a time. Yet
those records lie together in the journal: in that region the scan needs most of every MiB.

A *sweep* reads that region in journal order, in 1 MiB reads, from a background thread,
while the scan goes on: once the scan has made SCAN_AFTER reads of many pieces each, each
near where the one before ended (:class:`ScanDetector`), the store plans the rest of the
volume (:class:`SweepPlan`: for each 1 MiB span of the journal, how much of it the rest of the
scan needs) and reads the spans it needs at least MIN_FILL of, the *scattered* ones first
(spans whose pieces lie far apart in the volume: the random writes' region, which no
read-ahead of the segment files can guess) and then the others, in journal order. The pages
land in the page cache, where the scan's own reads find them. Nothing is verified or decoded
here: a sweep only reads, and every byte the scan returns is verified by the read path as
before. A sweep is a hint: a segment deleted meanwhile, a failed read or the store closing
ends it early, silently.

Bounds: one sweep at a time per store; at most SWEEP_MAX bytes per sweep and a quarter of the
memory the kernel says is available (``MemAvailable``), so that the pages it reads are still
cached when the scan reaches them (the scattered spans come first within that budget); the
map is looked up WINDOW bytes at a time, the store lock held for one window; segment deletion
waits only for the 1 MiB read in flight and its hints (sweeper.py). Remote pools (RADOS) have no page cache of their
segments and are never swept.

Measured (docs/benchmarks.md section 9, "Sweeps and runs R25 and R26"): a 1 GiB volume written in 1 MiB
requests and aged by 12 s of fio's 4 KiB random writes, read cold in 1 MiB requests through
FUSE, 261-314 MiB/s against 199-233 without (alternating runs; 376-411 with the whole journal
already cached); a backup job's reads of such a volume in process, 302-470 against 167-243 MiB/s.
"""

from __future__ import annotations

from collections.abc import Iterable

from vstor.store.journal.format import loc_pos, loc_segno

__all__ = ["COVERED", "COVER_SECONDS", "MAX_STREAMS", "MIN_FILL", "SCAN_AFTER", "SCATTERED", "SPAN", "START",
           "SWEEP_MAX", "WINDOW", "ScanDetector", "SweepPlan"]

SPAN = 1 << 20  # the journal is planned and read in spans of this size
MIN_FILL = SPAN // 8  # a span is read only if the scan needs at least this much of it
SCATTERED = 8 * SPAN  # a span whose pieces lie further apart than this in the volume is scattered
SCAN_AFTER = 4  # reads of many pieces, each near the end of the one before, before a sweep starts
MAX_STREAMS = 256  # images whose streams and sweeps are remembered (each backup job's snapshot is a new one)
COVER_SECONDS = 60.0  # a sweep covers the later streams of its image for this long after it started
NEAR = 4 << 20  # "near": the kernel's read-ahead sends a stream's requests up to 3 MiB out of order
WINDOW = 64 << 20  # the map is looked up this much at a time, the store lock held for one window
SWEEP_MAX = 2 << 30  # bytes read by one sweep at most
PIECE_OVERHEAD = 128  # a small record's header and frame table, read with its data


START = 1  # ScanDetector.note: a scan that should be swept now
COVERED = 2  # ... a read of a scan whose sweep has planned all it needs


class ScanDetector:
    """Tells, read by read, when a reader of many-piece reads has become a sequential scan, and
    whether a sweep covers it.

    Fed only reads that found many pieces (an aged range); one stream per volume image
    ``(vid, sid)``. A stream continues while each read starts within NEAR bytes of the end of
    the furthest read so far; another read starts a new one. A scan through a filesystem jumps
    between the file's extents, so a sweep, which plans the rest of the image from where it
    started, covers every stream of that image from there on for COVER_SECONDS after it started
    (:meth:`started`). :meth:`note` says START from a stream's SCAN_AFTER-th read while no
    sweep covers it, COVERED while one does whose plan holds everything the rest of the image
    needs (:meth:`covered`), so that the reads stop asking for their records one by one. It
    remembers the last MAX_STREAMS images. The caller serializes calls (the store calls it
    under its lock) and gives the time (``now``, seconds, monotonic)."""

    def __init__(self, after: int = SCAN_AFTER, near: int = NEAR, cover: float = COVER_SECONDS) -> None:
        self.after, self.near, self.cover = after, near, cover
        self._streams: dict[tuple[int, int], list[int]] = {}  # image -> [furthest end, reads]
        self._sweeps: dict[tuple[int, int], list] = {}  # image -> [from offset, until, covered]

    def note(self, vid: int, sid: int, offset: int, size: int, now: float) -> int:
        """0, START or COVERED for a read of [offset, offset+size) of the image."""
        key = (vid, sid)
        st = self._streams.get(key)
        if st is not None and abs(offset - st[0]) <= self.near:
            st[0], st[1] = max(st[0], offset + size), st[1] + 1
        else:
            st = self._remember(self._streams, key, [offset + size, 1])
        sw = self._sweeps.get(key)
        if sw is not None and now < sw[1] and offset + self.near >= sw[0]:
            return COVERED if sw[2] else 0
        return START if st[1] >= self.after else 0

    def started(self, vid: int, sid: int, offset: int, now: float) -> None:
        """A sweep of the image from ``offset`` on has started: none other is asked for reads
        past it for COVER_SECONDS."""
        self._remember(self._sweeps, (vid, sid), [offset, now + self.cover, False])

    def covered(self, vid: int, sid: int, yes: bool = True) -> None:
        """That sweep planned all the rest of the image needs (``yes``), or failed since."""
        sw = self._sweeps.get((vid, sid))
        if sw is not None:
            sw[2] = yes

    def forget(self, vid: int, sid: int) -> None:
        """The image's sweep no longer covers its streams (the pages it read are gone): the
        stream's next read may start another."""
        self._sweeps.pop((vid, sid), None)

    @staticmethod
    def _remember(d: dict, key: tuple[int, int], value: list) -> list:
        if key not in d and len(d) >= MAX_STREAMS:
            del d[next(iter(d))]  # the image first seen longest ago
        d[key] = value
        return value


class SweepPlan:
    """The journal spans a scan will read its small pieces from, and how much of each.

    :meth:`add` takes a scan's pieces ``(start, end, loc)`` window by window, in the volume's
    order; pieces over ``small`` bytes are left to the segment files' own read-ahead (a large
    record is one read that the kernel reads ahead of). :meth:`runs` gives what to read."""

    def __init__(self, small: int) -> None:
        self.small = small
        self.cut = False  # whether runs() left spans out for the budget
        self._need: dict[int, int] = {}  # span (its first byte's loc) -> bytes the scan reads there
        self._lo: dict[int, int] = {}  # span -> lowest volume offset of its pieces
        self._hi: dict[int, int] = {}  # span -> highest end

    def add(self, pieces: Iterable[tuple[int, int, int]]) -> None:
        need, lo, hi, small, mask = self._need, self._lo, self._hi, self.small, ~(SPAN - 1)
        for s, e, loc in pieces:
            if e - s > small:
                continue
            span = loc & mask
            got = need.get(span)
            if got is None:
                need[span], lo[span], hi[span] = e - s + PIECE_OVERHEAD, s, e
            else:
                need[span] = got + e - s + PIECE_OVERHEAD
                if e > hi[span]:
                    hi[span] = e
                if s < lo[span]:
                    lo[span] = s

    def runs(self, budget: int) -> list[tuple[int, int, int]]:
        """``(segno, pos, length)`` to read: the spans needed at least MIN_FILL, the scattered
        ones first, each group in journal order, adjacent spans merged; no more than ``budget``
        bytes in all (the scattered spans come first within it). :attr:`cut` says whether the
        budget left some out."""
        self.cut = False
        keep = [span for span, n in self._need.items() if n >= MIN_FILL]
        scattered = sorted(span for span in keep if self._hi[span] - self._lo[span] > SCATTERED)
        ordered = sorted(span for span in keep if self._hi[span] - self._lo[span] <= SCATTERED)
        out: list[tuple[int, int, int]] = []
        left = budget
        for group in (scattered, ordered):
            first = len(out)
            for span in group:
                if left < SPAN:
                    self.cut = True
                    return out
                left -= SPAN
                segno, pos = loc_segno(span), loc_pos(span)
                if len(out) > first and out[-1][0] == segno and out[-1][1] + out[-1][2] == pos:
                    out[-1] = (segno, out[-1][1], out[-1][2] + SPAN)
                else:
                    out.append((segno, pos, SPAN))
        return out

    @property
    def needed(self) -> int:
        """Bytes the scan reads from the spans planned (their pieces and record headers)."""
        return sum(self._need.values())
