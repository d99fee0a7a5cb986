"""One side of an optical disc: its image, its state and its sessions.

Write-once media (CD-R, DVD+R, BD-R, BDXL) go blank -> appendable -> finalized. Writes are
accepted only at the next writable address (NWA), in order; closing the drive file closes
the session (its extent is recorded); finalize closes the disc for good, after which every
write is refused (EROFS). Rewritable media (DVD-RW, BD-RE, MO) take random writes anywhere
within capacity and can be erased. Two-sided MO discs have one image and one state per
side. The image is ``LIB/BARCODE.sideN.img`` (sparse) and the state ``.json`` beside it,
replaced atomically when a session closes, so after a crash the disc holds its last closed
session state (bytes written after it are past the recorded NWA and are overwritten by the
next session).
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import asdict, dataclass, field

from vstor.durable import atomic_write
from vstor.errors import MediaError
from vstor.media.mediatypes import DiscType
from vstor.units import format_size

SECTOR = 2048


@dataclass
class SideState:
    state: str = "blank"  # blank, appendable, finalized (write-once); blank, written (rewritable)
    sessions: list[list[int]] = field(default_factory=list)  # [start, end) byte extents
    nwa: int = 0  # next writable address in bytes (write-once)


class DiscSide:
    def __init__(self, directory: str, barcode: str, dtype: DiscType, side: int, protect: bool = False) -> None:
        self.barcode, self.type, self.side, self.protect = barcode, dtype, side, protect
        base = os.path.join(directory, f"{barcode}.side{side}")
        self.image, self.meta = base + ".img", base + ".json"
        self.st = SideState()
        if os.path.exists(self.meta):
            with open(self.meta) as f:
                self.st = SideState(**json.load(f))
        self.fd = os.open(self.image, os.O_RDWR | os.O_CREAT, 0o600)
        self.session_start: int | None = None
        self.read_bytes = self.write_bytes = 0  # since the load (the metrics exporter reads them)

    @property
    def capacity(self) -> int:
        return self.type.capacity

    def read(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.capacity - offset))
        data = os.pread(self.fd, size, offset)
        self.read_bytes += size
        return data + bytes(size - len(data))  # unwritten areas read as zeros

    def write(self, offset: int, data: bytes) -> int:
        if self.protect:
            raise MediaError(f"{self.barcode} is write-protected", errno.EROFS)
        if self.st.state == "finalized":
            raise MediaError(f"{self.barcode} side {self.side} is finalized: no more writes", errno.EROFS)
        if offset + len(data) > self.capacity:
            raise MediaError(f"{self.barcode}: write past the end of the disc ({format_size(self.capacity)})",
                             errno.ENOSPC)
        if not self.type.rewritable:
            if offset != self.st.nwa:
                raise MediaError(f"{self.barcode} is write-once: the next writable address is {self.st.nwa} "
                                f"(sector {self.st.nwa // SECTOR}), not {offset}", errno.EIO)
            if self.session_start is None:
                self.session_start = offset
            self.st.nwa = offset + len(data)
        os.pwrite(self.fd, data, offset)
        self.write_bytes += len(data)
        if self.type.rewritable:
            self.st.state = "written"
        return len(data)

    def close_session(self) -> None:
        """End of an open: a write-once session becomes a closed, recorded session."""
        os.fsync(self.fd)
        if self.session_start is not None:
            self.st.sessions.append([self.session_start, self.st.nwa])
            self.st.state = "appendable"
            self.session_start = None
        self._save()

    def finalize(self) -> None:
        if self.type.rewritable:
            raise MediaError(f"{self.barcode} ({self.type.name}) is rewritable: there is nothing to finalize",
                            errno.EINVAL)
        self.close_session()
        self.st.state = "finalized"
        self._save()

    def erase(self) -> None:
        if not self.type.rewritable:
            raise MediaError(f"{self.barcode} ({self.type.name}) is write-once and cannot be erased", errno.EROFS)
        if self.protect:
            raise MediaError(f"{self.barcode} is write-protected", errno.EROFS)
        os.ftruncate(self.fd, 0)
        self.st = SideState()
        self._save()

    def _save(self) -> None:
        atomic_write(self.meta, json.dumps(asdict(self.st)).encode())

    def describe(self) -> dict:
        return {"side": self.side, "state": self.st.state, "sessions": self.st.sessions,
                "next_writable_address": None if self.type.rewritable else self.st.nwa}

    def close(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
