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

Where they live comes in through the constructor: the image in a sparse
:class:`~vstor.store.backend.files.FileArea` (the pool's ``sparse_file_area("optical", POOL/media)``:
the file ``POOL/media/LIB/BARCODE.sideN.img`` on a local pool, only its written stripes on
RADOS), the state in the pool's media state files (:class:`PoolFiles` ``media``: the file
``POOL/media/LIB/BARCODE.sideN.json`` replaced with ``atomic_write``, or one object replaced
with ``write_full``). Closing a session syncs the image (fsync, or every RADOS write
acknowledged) before the state is replaced, so a recorded session's bytes are durable.
"""

from __future__ import annotations

import errno
import json
from dataclasses import asdict, dataclass, field

from vstor.errors import MediaError
from vstor.media.mediatypes import DiscType
from vstor.store.backend.files import FileArea
from vstor.store.backend.statefiles import PoolFiles
from vstor.units import format_size

SECTOR = 2048


@dataclass
class SideState:
    state: str = "blank"  # blank, appendable, finalized (write-once); blank, written (rewritable)
    sessions: list[list[int]] = field(default_factory=list)  # [start, end) byte extents
    nwa: int = 0  # next writable address in bytes (write-once)


def side_names(lib: str, barcode: str, side: int) -> tuple[str, str]:
    """The names of a side's image (in the disc area) and state (in the media state files)."""
    base = f"{lib}/{barcode}.side{side}"
    return base + ".img", base + ".json"


class DiscSide:
    def __init__(self, images: FileArea, states: PoolFiles, lib: str, barcode: str, dtype: DiscType, side: int,
                 protect: bool = False) -> None:
        """``images``: the disc area; ``states``: the media state files (``PoolFiles.sub("media")``)."""
        self.barcode, self.type, self.side, self.protect = barcode, dtype, side, protect
        self.images, self.states = images, states
        self.image, self.meta = side_names(lib, barcode, side)
        raw = states.read(self.meta)
        self.st = SideState(**json.loads(raw)) if raw is not None else SideState()
        self.file = images.open(self.image, create=True)
        self.closed = False
        self.session_start: int | None = None
        self.read_bytes = self.write_bytes = 0  # since the load (the metrics exporter reads them)

    @property
    def capacity(self) -> int:
        return self.type.capacity

    def read(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.capacity - offset))
        data = self.file.pread(size, offset)
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
        self.file.pwrite(data, offset)
        self.write_bytes += len(data)
        if self.type.rewritable:
            self.st.state = "written"
        return len(data)

    def close_session(self) -> None:
        """End of an open: a write-once session becomes a closed, recorded session."""
        self.file.sync(metadata=True)
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
        self.file.truncate(0)
        self.file.sync(metadata=True)
        self.st = SideState()
        self._save()

    def _save(self) -> None:
        self.states.write(self.meta, json.dumps(asdict(self.st)).encode())

    def describe(self) -> dict:
        return {"side": self.side, "state": self.st.state, "sessions": self.st.sessions,
                "next_writable_address": None if self.type.rewritable else self.st.nwa}

    def close(self) -> None:
        if not self.closed:
            self.file.close()
            self.closed = True
