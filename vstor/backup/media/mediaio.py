"""Writing and reading backup job parts on a tape drive (in-process, through the st-like TapeDrive).

Layout of a cartridge vstor writes: tape file 0 is a :class:`~vstor.backup.media.tapefile.TapeLabel`;
every later tape file is one job part: a :class:`~vstor.backup.media.tapefile.PartHeader` block, then
the tar stream in :data:`~vstor.backup.media.tapefile.RECORD`-byte blocks (AES-GCM sealed when the job
has a key), then a filemark.

Guarantees of :class:`TapeWriter`:

* the stream's bytes land on the media exactly once and in order: a block the drive refuses with
  ENOSPC (early warning or the hard end) wrote nothing and is written again as the first data block
  of the next part on the next cartridge, so the parts' data blocks concatenated are the stream;
* the first write positions at end of data (MTEOM): a blank tape gets a label first, a tape whose
  data does not end in a filemark (a crash) gets one, so the header always starts a tape file; the
  caller chooses the cartridge (the label of a non-blank tape is not checked here);
* every part is closed with a filemark written by MTWEOF; every data block except the job's last is
  RECORD bytes (before sealing); the last block of the job is padded with zeros to 512 bytes;
* each :class:`PartPlace` gives the part's tape file, its data blocks and the sha256 of the
  blocks as stored (header excluded), which :func:`part_sha256` recomputes from the tape.
"""

from __future__ import annotations

import errno
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

from vstor.backup.media.tapefile import PART_MAGIC, RECORD, Hasher, PartHeader, TapeLabel, open_record, seal_record
from vstor.errors import FormatError, MediaError, UsageError
from vstor.media import tapedrive as td
from vstor.media.tapedrive import TapeDrive

READ_SIZE = RECORD + 4096  # a read buffer larger than any block this module writes (sealed: +16)


@dataclass
class PartPlace:
    part: int
    barcode: str
    file: int  # tape file number of the part (its header is block 0)
    first_block: int  # block number within the file of the first data block
    last_block: int  # ... and of the last (first_block - 1 when the part holds no data)
    bytes: int  # tar stream bytes in this part
    sha256: str  # of the blocks as written to the medium, header excluded


class TapeWriter:
    """Cuts a job's tar stream into tape blocks, spanning cartridges at the end of tape."""

    def __init__(self, drive: TapeDrive, next_drive: Callable[[], TapeDrive], header: Callable[[int, str], bytes],
                 key: bytes | None = None, job: int = 0, clock: Callable[[], float] = time.time,
                 new_hash: Callable[[], Hasher] = hashlib.sha256) -> None:
        """``new_hash`` makes each part's sha256 (a job's overlaps its I/O: overlap.py)."""
        self.drive, self.next_drive, self.header, self.key, self.job = drive, next_drive, header, key, job
        self.clock, self.new_hash = clock, new_hash
        self.places: list[PartPlace] = []
        self._buf = bytearray()
        self._part = 0
        self._open: PartPlace | None = None  # the part being written
        self._hash: Hasher = new_hash()
        self._closed = False

    def write(self, data: bytes | memoryview) -> None:
        """Buffer ``data``; every full RECORD goes to the tape. Whole records of ``data`` go as
        slices of it, uncopied (the stream's 4 MiB pieces): only the ends are buffered."""
        if self._closed:
            raise UsageError("the tape writer is closed")
        view = memoryview(data)
        if self._buf:  # top up the partial record first
            need = RECORD - len(self._buf)
            self._buf += view[:need]
            view = view[need:]
            if len(self._buf) < RECORD:
                return
            self._emit(bytes(self._buf))
            self._buf.clear()
        whole = len(view) - len(view) % RECORD
        for i in range(0, whole, RECORD):
            self._emit(cast(bytes, view[i : i + RECORD]))  # a view, not a copy: its consumers take any buffer
        self._buf += view[whole:]

    def close(self) -> list[PartPlace]:
        """Write the last (zero-padded to 512) block and the closing filemark; the places of all parts."""
        if not self._closed:
            if self._buf:
                self._emit(bytes(self._buf) + bytes(-len(self._buf) % 512))
            elif self._open is None and not self.places:
                self._begin()  # an empty job still gets its part: a header and a filemark
            self._buf.clear()
            if self._open is not None:
                self._end_part()
            self._closed = True
        return list(self.places)

    # -- parts ----------------------------------------------------------------------------------
    def _emit(self, record: bytes) -> None:
        retried = False
        while True:
            if self._open is None:
                self._begin()
            p = self._open
            assert p is not None
            index = p.last_block - p.first_block + 1
            block = seal_record(self.key, self.job, self._part, index, record) if self.key else record
            if self._put(block):
                p.last_block += 1
                p.bytes += len(record)
                self._hash.update(block)
                return
            if index == 0 and not retried:  # early warning right after the header: st lets us go on
                retried = True
                continue
            self._end_part()
            self.drive = self.next_drive()

    def _begin(self) -> None:
        """Position at EOD, label a blank tape, write the part header (on the next cartridge if full)."""
        while True:
            barcode = self.drive.cart.barcode
            raw = self.header(self._part, barcode)
            h = PartHeader.decode(raw)
            if (h.key_id is not None) != (self.key is not None) or h.job != self.job or h.part != self._part:
                raise UsageError(f"the header for part {self._part} says job {h.job} part {h.part} key {h.key_id}: "
                                 f"it does not match the writer (job {self.job}, key given: {self.key is not None})")
            self.drive.op(td.MTEOM, 1)
            st = self.drive.status()
            if st.position == 0:
                self.drive.write(TapeLabel(barcode, h.pool_uuid, self.clock()).encode())
                self.drive.op(td.MTWEOF, 1)
            elif not st.gstat & td.GMT_EOF:
                self.drive.op(td.MTWEOF, 1)  # a file left open (a crash): close it before ours
            file = self.drive.status().fileno
            if self._put(raw):
                self._open = PartPlace(self._part, barcode, file, 1, 0, 0, "")
                self._hash = self.new_hash()
                return
            self.drive = self.next_drive()  # no room even for the header: nothing of this part is here

    def _put(self, block: bytes) -> bool:
        """Write one block; False if the drive refused it with ENOSPC (then nothing was written)."""
        try:
            self.drive.write(block)
        except MediaError as e:
            if e.errno != errno.ENOSPC:
                raise
            return False
        return True

    def _end_part(self) -> None:
        p = self._open
        assert p is not None
        self.drive.op(td.MTWEOF, 1)
        p.sha256 = self._hash.hexdigest()
        self.places.append(p)
        self._open = None
        self._part += 1


# -- reading --------------------------------------------------------------------------------------
def _open_file(drive: TapeDrive, file: int) -> bytes:
    """Rewind, space to tape file ``file`` and return its first block (the header)."""
    drive.op(td.MTREW, 1)
    if file:
        drive.op(td.MTFSF, file)
    raw = drive.read(READ_SIZE)
    if not raw:
        raise FormatError(f"tape file {file} is empty or past the end of data")
    return raw


def _blocks(drive: TapeDrive) -> Iterator[bytes]:
    """The blocks up to the next filemark (or the end of data)."""
    while block := drive.read(READ_SIZE):
        yield block


def read_part(drive: TapeDrive, file: int, key: bytes | None = None, job: int = 0, part: int = 0) -> Iterator[bytes]:
    """The tar stream bytes of part ``part`` of ``job`` stored at tape file ``file``.

    FormatError if the file does not start with that part's header; CorruptData (from
    :func:`~vstor.backup.media.tapefile.open_record`) if a sealed block is damaged, moved or swapped.
    """
    h = PartHeader.decode(_open_file(drive, file))
    if (h.job, h.part) != (job, part):
        raise FormatError(f"tape file {file} holds job {h.job} part {h.part}, not job {job} part {part}")
    if (h.key_id is not None) != (key is not None):
        raise UsageError(f"job {job} part {part} has key id {h.key_id}, but a key was {'not ' * (key is None)}given")
    for index, block in enumerate(_blocks(drive)):
        yield open_record(key, job, part, index, block) if key else block


def part_sha256(drive: TapeDrive, file: int) -> str:
    """The sha256 of the blocks of tape file ``file`` after its header, as :class:`PartPlace` has it."""
    return part_summary(drive, file)[3]


def part_summary(drive: TapeDrive, file: int) -> tuple[PartHeader, int, int, str]:
    """Tape file ``file``'s header, and its data blocks' count, bytes as stored and sha256 (as
    :class:`PartPlace` has it): what a catalog rebuild records for a part found on a cartridge."""
    header = PartHeader.decode(_open_file(drive, file))
    h = hashlib.sha256()
    count = size = 0
    for block in _blocks(drive):
        h.update(block)
        count += 1
        size += len(block)
    return header, count, size, h.hexdigest()


def scan_cartridge(drive: TapeDrive, on_damaged: Callable[[int, FormatError], None] | None = None
                   ) -> Iterator[tuple[int, PartHeader]]:
    """(tape file, header) of every job part on the loaded cartridge, in tape order.

    Files that are the label, empty, or not vstor's at all are skipped; a file whose first block
    has vstor's magic but fails its checksum raises FormatError, or goes to ``on_damaged`` if given.
    The drive must not be used by others while the iterator runs.
    """
    drive.op(td.MTREW, 1)
    file = 0
    while not drive.status().gstat & td.GMT_EOD:
        before = drive.status().position
        try:
            raw = drive.read(READ_SIZE)
        except MediaError as e:
            if e.errno != errno.ENOMEM:
                raise
            raw = b"\0"  # a block larger than ours: not a vstor file
        if not raw and drive.status().position == before:
            return  # the end of data: a read there does not move (a blank tape has no EOD status)
        header = None
        if raw:
            try:
                header = PartHeader.decode(raw)
            except FormatError as e:
                if raw.startswith(PART_MAGIC.encode()):
                    if on_damaged is None:
                        raise
                    on_damaged(file, e)
            if header is not None:
                yield file, header
            try:
                drive.op(td.MTFSF, 1)
            except MediaError:
                return  # the last file has no filemark (a crash): nothing after it
        file += 1
