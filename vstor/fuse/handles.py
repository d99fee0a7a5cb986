"""FUSE file handles of the volume export: what each open file is, and who holds what. Pure.

An open file is one of four kinds, each a class, so the FUSE operations dispatch on the kind
(``match``) and a type checker sees every case:

* :class:`VolumeHandle`: a volume's read-write image (``/volumes/NAME``);
* :class:`SnapshotHandle`: a snapshot member's read-only image (``/snapshots/G/S/V``);
* :class:`StatsHandle`: a stats file, rendered once at open (``/stats``, ``/stats.json``);
* :class:`MediaHandle`: a tape or disc drive file (``/media/...``), held by the media adapter.

:class:`HandleTable` numbers them for the kernel and counts the open images per volume and per
snapshot, which admin commands consult (a volume in use is not shrunk or deleted; a snapshot
attached through a loop device is not pruned or deleted).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["Handle", "HandleTable", "MediaHandle", "SnapshotHandle", "StatsHandle", "VolumeHandle"]


@dataclass(frozen=True, slots=True)
class VolumeHandle:
    """A volume's image. ``sync``: opened with O_DSYNC or O_SYNC, so each write is durable before
    it returns (write-through, as FUA on NBD): the kernel's FUSE sends no FSYNC after an
    asynchronous (libaio, io_uring) direct write, so the server must honour the open flag itself."""

    vid: int
    sync: bool = False


@dataclass(frozen=True, slots=True)
class SnapshotHandle:
    sid: int
    vid: int


@dataclass(frozen=True, slots=True)
class StatsHandle:
    data: bytes


@dataclass(frozen=True, slots=True, eq=False)
class MediaHandle:
    drive: Any  # the media adapter's own handle (vstor.fuse.media_fs.Handle)


Handle = VolumeHandle | SnapshotHandle | StatsHandle | MediaHandle
Image = VolumeHandle | SnapshotHandle


class HandleTable:
    """File handle numbers -> handles, and open counts of the images (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: dict[int, Handle] = {}
        self._next = 1
        self._open: dict[Image, int] = {}

    def add(self, h: Handle) -> int:
        with self._lock:
            fh = self._next
            self._next += 1
            self._handles[fh] = h
            if isinstance(h, VolumeHandle | SnapshotHandle):
                self._open[h] = self._open.get(h, 0) + 1
        return fh

    def get(self, fh: int) -> Handle | None:
        return self._handles.get(fh)

    def pop(self, fh: int) -> Handle | None:
        with self._lock:
            h = self._handles.pop(fh, None)
            if isinstance(h, VolumeHandle | SnapshotHandle):
                self._open[h] -= 1
                if not self._open[h]:
                    del self._open[h]
        return h

    def volumes_in_use(self) -> dict[int, int]:
        """Open handles per volume id."""
        with self._lock:
            return {h.vid: n for h, n in self._open.items() if isinstance(h, VolumeHandle)}

    def snapshots_in_use(self) -> dict[int, int]:
        """Open handles per snapshot id (a loop device attached to a member image holds one)."""
        out: dict[int, int] = {}
        with self._lock:
            for h, n in self._open.items():
                if isinstance(h, SnapshotHandle):
                    out[h.sid] = out.get(h.sid, 0) + n
        return out
