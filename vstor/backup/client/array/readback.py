"""Reading byte ranges of a job's pax stream back from tape, positioning at the record that holds them.

A job's stream is cut into :data:`~vstor.backup.media.tapefile.RECORD`-byte records (the last one
shorter), written as the data blocks of its parts in order (mediaio.py); so stream offset O lies
in record O // RECORD, which is data block k of one part. :class:`RangeReader` loads that part's
cartridge, spaces to its tape file (MTFSF) and then forward over k blocks (MTFSR: a locate, which
the library's timing model charges by distance), and reads only the records the range needs.
Reading on from where the drive stands, when the next range starts there or just after, avoids
any repositioning, so a restore in stream order is one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from vstor.backup.media.cartridges import Cartridges
from vstor.backup.media.tapefile import RECORD, open_record
from vstor.errors import CorruptData, FormatError
from vstor.media import tapedrive as td
from vstor.media.tapedrive import TapeDrive

READ_SIZE = RECORD + 64  # a sealed record is 16 bytes longer
READ_AHEAD = 4  # records: a gap this short is read through instead of spaced over


class TapeAccess:
    """One cartridge at a time for the readers of a restore (the jobs of an incremental's files
    may share cartridges): a reader that finds the drive moved by another repositions."""

    def __init__(self, cartridges: Callable[[str], Cartridges]) -> None:
        self.cartridges = cartridges
        self._carts: Cartridges | None = None
        self._drive: TapeDrive | None = None
        self.current: tuple[str, str] | None = None
        self.owner: object = None

    def drive(self, reader: object, library: str, barcode: str) -> tuple[TapeDrive, bool]:
        """The drive holding ``barcode``, and whether ``reader`` must reposition it."""
        if self.current == (library, barcode) and self._drive is not None:
            fresh, self.owner = self.owner is not reader, reader
            return self._drive, fresh
        self.release()
        self._carts = self.cartridges(library)
        self._drive = self._carts.load_for_read(barcode)
        self.current, self.owner = (library, barcode), reader
        return self._drive, True

    def release(self) -> None:
        if self._carts is not None:
            self._carts.release()
        self._carts = self._drive = self.current = self.owner = None


class RangeReader:
    """Ranges of job ``job``'s stream (a catalog job dict with its parts)."""

    def __init__(self, job: dict, access: TapeAccess, key: bytes | None) -> None:
        self.job, self.access, self.key = job, access, key
        self.parts = sorted(job["parts"], key=lambda p: p["part"])
        self.first: list[int] = []  # the stream record index each part starts at
        n = 0
        for p in self.parts:
            self.first.append(n)
            n += p["last_block"] - p["first_block"] + 1
        self.records = n
        self._drive: TapeDrive | None = None
        self._at: tuple[int, int] | None = None  # (part index, data block index) the drive is at
        self.read_bytes = 0  # bytes read from tape, headers included
        self._last: tuple[int, bytes] | None = None  # the last record read: small files share records

    def _where(self, record: int) -> tuple[int, int]:
        for i in range(len(self.parts) - 1, -1, -1):
            if record >= self.first[i]:
                return i, record - self.first[i]
        raise FormatError(f"job {self.job['id']}: record {record} is before its first part")

    def _seek(self, part: int, index: int) -> None:
        p = self.parts[part]
        drive, fresh = self.access.drive(self, p["library"], p["barcode"])
        if fresh:
            self._at = None
        self._drive = drive
        if self._at is not None and self._at[0] == part and 0 <= index - self._at[1] <= READ_AHEAD:
            while self._at[1] < index:
                self._block()
            return
        drive.op(td.MTREW, 1)
        if p["file"]:
            drive.op(td.MTFSF, p["file"])
        self.read_bytes += len(drive.read(READ_SIZE))  # the part header
        if index:
            drive.op(td.MTFSR, index)
        self._at = (part, index)

    def _block(self) -> bytes:
        assert self._drive is not None and self._at is not None
        raw = self._drive.read(READ_SIZE)
        if not raw:
            raise CorruptData(f"job {self.job['id']}: part {self._at[0]} ends before block {self._at[1]}")
        self.read_bytes += len(raw)
        part, index = self._at
        self._at = (part, index + 1)
        p = self.parts[part]
        return open_record(self.key, self.job["id"], p["part"], index, raw) if self.key else raw

    def read(self, offset: int, length: int) -> Iterator[bytes]:
        """The stream's bytes [offset, offset + length), in pieces."""
        while length > 0:
            record, skip = divmod(offset, RECORD)
            if record >= self.records:
                raise CorruptData(f"job {self.job['id']}: byte {offset} is past the end of its parts")
            if self._last is not None and self._last[0] == record:
                block = self._last[1]
            else:
                part, index = self._where(record)
                self._seek(part, index)
                block = self._block()
                self._last = (record, block)
            piece = block[skip : skip + length]
            if not piece:
                raise CorruptData(f"job {self.job['id']}: record {record} is short")
            yield piece
            offset += len(piece)
            length -= len(piece)
