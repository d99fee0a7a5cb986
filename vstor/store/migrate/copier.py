"""The copy of one pool's objects from a local directory to another backend, each verified.

Every object is written through the destination backend, then read back from it and its
sha256 compared with the source's (computed while the source was read): a mismatch is
CorruptData and the migrate stops, leaving an unfinished destination (no ``pool.json``).
Segments are copied in CHUNK pieces (``create_segment`` with the header, ``write_segment``
for the rest, ``flush_segment``), so no segment is held in memory whole. On a resumed
migrate a destination segment whose size and sha256 already match is kept, one that does not
is deleted and copied again, and one the source no longer has is deleted.

Fault points (vstor/faults.py): ``migrate.segment`` after each segment is copied and
verified, ``migrate.superblock`` before the superblock copies are written.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from vstor.errors import AlreadyExists, CorruptData
from vstor.faults import NO_FAULTS, Faults
from vstor.store.backend.base import PoolBackend
from vstor.store.backend.local import LocalBackend
from vstor.store.journal.format import SEGMENT_HEADER_SIZE
from vstor.store.migrate.placement import CHUNK, place_other_file
from vstor.store.migrate.plan import Meter, classify, segment_number
from vstor.store.superblock import COPY_BLOB, SUPERBLOCK

__all__ = ["Copier", "Inventory", "inventory"]


@dataclass
class Inventory:
    """The source pool's files by kind (relative names), and their total size."""

    segments: list[int] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes: int = 0


def inventory(root: str) -> Inventory:
    """Every regular file under the pool directory ``root``, classified (plan.classify)."""
    inv = Inventory()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            path = os.path.join(dirpath, fn)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            kind = classify(rel)
            if kind == "skip":
                inv.skipped.append(rel)
                continue
            inv.bytes += os.path.getsize(path)
            if kind == "segment":
                inv.segments.append(segment_number(rel) or 0)
            elif kind == "blob":
                inv.blobs.append(rel)
            elif kind == "other":
                inv.other.append(rel)
    inv.segments.sort()
    return inv


def _digest(chunks: Iterable[bytes | memoryview]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


class Copier:
    def __init__(self, source: LocalBackend, dest: PoolBackend, state_dir: str, meter: Meter,
                 faults: Faults = NO_FAULTS, resume: bool = False) -> None:
        self.src, self.dest, self.state_dir, self.meter = source, dest, state_dir, meter
        self.faults, self.resume = faults, resume
        self.kept = 0  # segments a resumed migrate found already copied
        self._present: set[int] = set()  # the destination's segments when a resumed migrate began

    # -- segments ----------------------------------------------------------------------------
    def _read(self, backend: PoolBackend, segno: int) -> Iterator[bytes]:
        pos = 0
        while True:
            got = backend.read_segment(segno, pos, CHUNK)
            if not got:
                return
            yield got
            pos += len(got)

    def segments(self, segnos: list[int]) -> None:
        if self.resume:
            self._present = set(self.dest.list_segments())
            for extra in sorted(self._present - set(segnos)):
                self.dest.delete_segment(extra)
        for segno in segnos:
            self.segment(segno)
            self.faults.hit("migrate.segment")

    def segment(self, segno: int) -> None:
        size = self.src.segment_size(segno)
        if segno in self._present:
            if self.dest.segment_size(segno) == size and \
                    _digest(self._read(self.dest, segno)) == _digest(self._read(self.src, segno)):
                self.kept += 1
                self.meter.add(size)
                return
            self.dest.delete_segment(segno)
        h = hashlib.sha256()
        pos = 0
        for chunk in self._read(self.src, segno):
            h.update(chunk)
            if pos == 0:
                self.dest.create_segment(segno, chunk[:SEGMENT_HEADER_SIZE])
                rest = memoryview(chunk)[SEGMENT_HEADER_SIZE:]
                if rest:
                    self.dest.write_segment(segno, SEGMENT_HEADER_SIZE, rest)
            else:
                self.dest.write_segment(segno, pos, chunk)
            pos += len(chunk)
            self.meter.add(len(chunk))
        if pos == 0:  # an empty segment file (a crash right after it was made)
            self.dest.create_segment(segno, b"")
        self.dest.flush_segment(segno)
        self._verify(f"journal segment {segno}", h.hexdigest(), self._read(self.dest, segno))

    def _verify(self, what: str, want: str, chunks: Iterable[bytes]) -> None:
        got = _digest(chunks)
        if got != want:
            raise CorruptData(f"{what} reads back from {self.dest.describe()} with sha256 {got[:16]}..., not "
                              f"the source's {want[:16]}...; the destination is unfinished: check the cluster, "
                              "then run the migrate again with --resume")

    # -- blobs and other files ---------------------------------------------------------------
    def blob(self, name: str, create: bool = False) -> None:
        data = self.src.get(name)
        if create:
            try:
                self.dest.create(name, data)
            except FileExistsError:
                raise AlreadyExists(f"{self.dest.describe()} already holds a vstor pool") from None
        else:
            self.dest.put(name, data)
        self.meter.add(len(data))
        self._verify(name, hashlib.sha256(data).hexdigest(), [self.dest.get(name)])

    def other(self, name: str) -> str:
        source = os.path.join(self.src.root, *name.split("/"))
        placed = place_other_file(self.dest, self.state_dir, name, source)
        want = _digest(placed.source() if placed.source else self._file(source))
        self.meter.add(os.path.getsize(source))
        self._verify(name, want, placed.read_back())
        return placed.where

    @staticmethod
    def _file(path: str) -> Iterator[bytes]:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def superblock(self) -> None:
        """The copy, then ``pool.json`` (exclusive create): the last object written."""
        self.faults.hit("migrate.superblock")
        self.blob(COPY_BLOB)
        self.blob(SUPERBLOCK, create=True)
