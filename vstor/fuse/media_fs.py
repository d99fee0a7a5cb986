"""FUSE adapter for media drives. Tape: ``/media/<lib>/drive<N>`` (rewinds on close, like
/dev/st0) and ``/media/<lib>/ndrive<N>`` (no rewind, like /dev/nst0). Optical: the loaded
disc side is ``/media/<lib>/drive<N>``, a file as large as the disc (unwritten areas read as
zeros); closing it closes a write-once disc's session.

Drive files are opened direct_io and non-seekable, so each read() and write() reaches us as
one request and block boundaries hold. lseek() on a tape drive file therefore fails with
ESPIPE, where st's noop_llseek returns 0: the kernel answers SEEK_SET/SEEK_CUR on a FUSE file
itself (FUSE_LSEEK carries only SEEK_DATA/SEEK_HOLE), and a seekable regular file is worse,
as GNU tar then skips members with lseek (it takes S_ISREG as seekable), which moves no tape.
mt-st talks to them with the st ioctls, which FUSE passes for well-formed _IOC numbers
(reference §6.3): MTIOCTOP in, MTIOCGET and MTIOCPOS out.
A drive is open by one handle at a time (EBUSY), as st does.
"""

from __future__ import annotations

import ctypes
import errno
import re
import stat
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from vstor.errors import NotFound, VstorError
from vstor.media.manager import MediaManager
from vstor.media.optical import DiscSide
from vstor.media.tapedrive import MTOFFL, MTUNLOAD, TapeDrive

MTIOCTOP, MTIOCGET, MTIOCPOS = 0x40086D01, 0x80306D02, 0x80086D03
MTOP = struct.Struct("<hxxi")  # mt_op, pad, mt_count
MTGET = struct.Struct("<qqqqqii")  # type resid dsreg gstat erreg fileno blkno
MT_ISSCSI2 = 0x72
RELEASE_WAIT = 2.0  # seconds an open waits for the previous handle's release before EBUSY
_DRIVE = re.compile(r"^/media/([^/]+)/(n?)drive(\d+)$")


@dataclass
class Handle:
    lib: str
    idx: int
    rewind: bool
    drive: TapeDrive | DiscSide
    unload: bool = False


class MediaFS:
    def __init__(self, mgr: MediaManager, fuse_error: Any) -> None:
        self.mgr = mgr
        self.err = fuse_error  # mfusepy.FuseOSError
        self.released = threading.Condition(mgr.lock)

    def getattr(self, path: str) -> dict[str, Any]:
        parts = path.split("/")[2:]
        if path == "/media" or (len(parts) == 1 and parts[0] in self.mgr.libs):
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        m = _DRIVE.match(path)
        lib = self.mgr.libs.get(m.group(1)) if m else None
        if m and lib is not None and int(m.group(3)) < len(lib.drives) and not (lib.type == "optical" and m.group(2)):
            size = 0
            code = lib.drives[int(m.group(3))]
            if lib.type == "optical" and code:
                size = lib.media[code].capacity
            return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": size}
        raise self.err(errno.ENOENT)

    def readdir(self, path: str) -> list[str]:
        if path == "/media":
            return [".", "..", *sorted(self.mgr.libs)]
        lib = self.mgr.libs.get(path[len("/media/") :])
        if lib is None:
            raise self.err(errno.ENOENT)
        n = len(lib.drives)
        rewinding = [] if lib.type == "optical" else [f"ndrive{i}" for i in range(n)]
        return [".", "..", *(f"drive{i}" for i in range(n)), *rewinding]

    def open(self, path: str, fi: Any) -> Handle:
        m = _DRIVE.match(path)
        if not m:
            raise self.err(errno.ENOENT)
        lib, idx = m.group(1), int(m.group(3))
        with self.mgr.lock:
            # FUSE sends RELEASE after close() has returned: a program that closes the drive and
            # opens it again at once (mt, then tar) must not see EBUSY from its own last handle.
            deadline = time.monotonic() + RELEASE_WAIT
            while (lib, idx) in self.mgr.open_drives and time.monotonic() < deadline:
                self.released.wait(0.05)
            if (lib, idx) in self.mgr.open_drives:
                raise self.err(errno.EBUSY)
            try:
                drv = self.mgr.drive(lib, idx)
            except NotFound:
                raise self.err(errno.ENOMEDIUM) from None
            except VstorError as e:
                raise self.err(e.errno) from None
            if fi.flags & 3 and (drv.read_only if isinstance(drv, TapeDrive) else drv.protect):
                raise self.err(errno.EROFS)
            self.mgr.open_drives.add((lib, idx))
        fi.direct_io = 1
        if isinstance(drv, TapeDrive):
            fi.nonseekable = 1
        return Handle(lib, idx, rewind=not m.group(2), drive=drv)

    def read(self, h: Handle, size: int, offset: int) -> bytes:
        with self.mgr.lock:
            if isinstance(h.drive, DiscSide):
                return self._call(h.drive.read, offset, size)
            return self._call(h.drive.read, size)

    def write(self, h: Handle, data: bytes, offset: int) -> int:
        with self.mgr.lock:
            if isinstance(h.drive, DiscSide):
                return self._call(h.drive.write, offset, data)
            return self._call(h.drive.write, data)

    def release(self, h: Handle) -> None:
        with self.mgr.lock:
            try:
                if isinstance(h.drive, DiscSide):
                    h.drive.close_session()
                else:
                    h.drive.close(rewind=h.rewind or h.unload)
            finally:
                self.mgr.open_drives.discard((h.lib, h.idx))
                self.released.notify_all()
            if h.unload:
                self.mgr.unload(h.lib, h.idx)

    def ioctl(self, h: Handle, cmd: int, data: Any) -> int:
        cmd &= 0xFFFFFFFF
        if not isinstance(h.drive, TapeDrive):
            raise self.err(errno.ENOTTY)
        with self.mgr.lock:
            if cmd == MTIOCTOP:
                op, count = MTOP.unpack(ctypes.string_at(data, MTOP.size))
                self._call(h.drive.op, op, count)
                if op in (MTOFFL, MTUNLOAD):
                    h.unload = True  # ejected when the handle closes
                return 0
            if cmd == MTIOCGET:
                st = h.drive.status()
                # mt reads the partition from mt_resid's low byte
                buf = MTGET.pack(MT_ISSCSI2, st.partition, (st.density << 24) | st.blksize, st.gstat, 0, st.fileno,
                                 st.blkno)
                ctypes.memmove(data, buf, MTGET.size)
                return 0
            if cmd == MTIOCPOS:
                ctypes.memmove(data, struct.pack("<q", h.drive.pos), 8)
                return 0
        raise self.err(errno.ENOTTY)

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except VstorError as e:
            raise self.err(e.errno) from None
