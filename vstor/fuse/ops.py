"""mfusepy Operations exporting the pool's volumes as fixed-size image files.

    /volumes/<name>                          read-write image of each volume
    /snapshots/<group|volume>/<snap>/<vol>   read-only image of each snapshot member
    /stats                                   array counters as text; /stats.json the same as JSON

Thin adapter: it maps FUSE calls to Store calls and VstorError to errno, nothing more.
fsync and flush both make the journal durable (never ENOSYS: the kernel would then treat
every later fsync as a success, and ext4 on a loop device would lose its barriers).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vstor.fuse.options import select_library, tune_connection, tuning

select_library()
import mfusepy as fuse  # noqa: E402

from vstor.errors import NotFound, VstorError  # noqa: E402
from vstor.fuse.direct import DirectReadFUSE  # noqa: E402
from vstor.fuse.handles import (  # noqa: E402
    Handle,
    HandleTable,
    MediaHandle,
    SnapshotHandle,
    StatsHandle,
    VolumeHandle,
)
from vstor.store.catalog import snapshots  # noqa: E402
from vstor.store.stats import VolumeIO, size_bucket  # noqa: E402
from vstor.store.store import Store  # noqa: E402

if TYPE_CHECKING:
    from vstor.fuse.media_fs import MediaFS

log = logging.getLogger("vstor.fuse")

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
STATS_FILES = ("stats", "stats.json")


def _errno(e: VstorError) -> fuse.FuseOSError:
    return fuse.FuseOSError(e.errno)


class VolumeFS(fuse.Operations):
    use_ns = True

    def __init__(self, store: Store, on_ready: Callable[[dict], None] | None = None,
                 extra_stats: Callable[[], dict] | None = None, media: MediaFS | None = None,
                 handles: HandleTable | None = None) -> None:
        self.store = store
        self.on_ready = on_ready
        self.extra_stats = extra_stats or dict
        self.media = media  # tape and disc drives under /media, if the daemon has libraries
        self.conn: dict[str, int] = {}
        self.handles = handles or HandleTable()  # the daemon passes its own: maintenance reads the counts
        self._drops_seen: dict[int, int] = {}  # per open image: Store.drops when last told (fsync EIO once)
        self._seen_sizes: set[tuple[str, str]] = set()  # (kind, size bucket) of the requests logged
        self.io = VolumeIO()  # per-volume requests, bytes and latency (the metrics exporter reads it)
        knobs = tuning()
        self.blksize = knobs.get("blksize", store.sb.chunk_size)
        self.statfs_bsize = knobs.get("statfs_bsize", store.sb.chunk_size)

    # -- lifecycle ---------------------------------------------------------------------------
    def init_with_config(self, conn: Any, config: Any) -> None:
        self.conn = tune_connection(conn)
        if config is not None:
            config.attr_timeout = 1.0
            config.entry_timeout = 1.0
        if self.on_ready:
            self.on_ready(self.conn)

    # -- namespace ---------------------------------------------------------------------------
    def _vol(self, path: str) -> Any:
        if not path.startswith("/volumes/"):
            raise fuse.FuseOSError(errno.ENOENT)
        try:
            return self.store.volume(path[len("/volumes/") :])
        except NotFound:
            raise fuse.FuseOSError(errno.ENOENT) from None

    def _snap(self, path: str) -> tuple[int, int, int, float]:
        parts = path.split("/")[2:]
        if len(parts) != 3:
            raise fuse.FuseOSError(errno.ENOENT)
        try:
            return snapshots.image(self.store, *parts)
        except NotFound:
            raise fuse.FuseOSError(errno.ENOENT) from None

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        if self.media and (path == "/media" or path.startswith("/media/")):
            return self.media.getattr(path)
        if path in ("/", "/volumes", "/snapshots"):
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        if path[1:] in STATS_FILES:
            return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": 0}
        if path.startswith("/snapshots/"):
            depth = path.count("/") - 1
            if depth < 3:
                if path[len("/snapshots/") :].split("/") not in (p[:depth] for p in snapshots.tree(self.store)):
                    raise fuse.FuseOSError(errno.ENOENT)
                return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}
            _sid, _vid, size, created = self._snap(path)
            return self._file_attr(0o400, size, created, 0)
        vol = self._vol(path)
        return self._file_attr(0o600, vol.size, vol.created, self.store.volume_usage(vol.id))

    def _file_attr(self, mode: int, size: int, created: float, used: int) -> dict[str, Any]:
        ns = int(created * 1e9)
        return {"st_mode": stat.S_IFREG | mode, "st_nlink": 1, "st_size": size, "st_blksize": self.blksize,
                "st_blocks": used // 512, "st_mtime": ns, "st_ctime": ns, "st_atime": ns}

    def readdir(self, path: str, fh: int) -> list[str]:
        if path == "/":
            return [".", "..", "volumes", "snapshots", *(["media"] if self.media else []), *STATS_FILES]
        if self.media and (path == "/media" or path.startswith("/media/")):
            return self.media.readdir(path)
        if path == "/volumes":
            return [".", "..", *(v.name for v in self.store.volumes())]
        if path == "/snapshots" or path.startswith("/snapshots/"):
            want = [p for p in path[len("/snapshots/") :].split("/") if p]
            names = {p[len(want)] for p in snapshots.tree(self.store) if p[: len(want)] == want and len(p) > len(want)}
            if not names and want and want not in (p[: len(want)] for p in snapshots.tree(self.store)):
                raise fuse.FuseOSError(errno.ENOENT)
            return [".", "..", *sorted(names)]
        raise fuse.FuseOSError(errno.ENOTDIR)

    def statfs(self, path: str) -> dict[str, int]:
        cs = self.statfs_bsize
        used = self.store.usage()["journal_bytes"]
        free = self.store.space.free_bytes()
        return {"f_bsize": cs, "f_frsize": cs, "f_blocks": (used + free) // cs, "f_bfree": free // cs,
                "f_bavail": free // cs, "f_namemax": 255}

    # -- handles -----------------------------------------------------------------------------
    def open(self, path: str, fi: Any) -> int:
        h: Handle
        if path[1:] in STATS_FILES:
            h = StatsHandle(self._render_stats(path == "/stats.json"))
            fi.direct_io = 1
        elif self.media and path.startswith("/media/"):
            h = MediaHandle(self.media.open(path, fi))
        elif path.startswith("/snapshots/"):
            if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
                raise fuse.FuseOSError(errno.EROFS)
            sid, vid, _size, _created = self._snap(path)
            h = SnapshotHandle(sid, vid)
        else:
            h = VolumeHandle(self._vol(path).id, sync=bool(fi.flags & os.O_DSYNC))  # O_SYNC includes it
        fi.fh = self.handles.add(h)
        if isinstance(h, VolumeHandle):
            self._drops_seen[fi.fh] = self.store.drops
        return 0

    def release(self, path: str, fi: Any) -> int:
        h = self.handles.pop(fi.fh)
        self._drops_seen.pop(fi.fh, None)
        if isinstance(h, MediaHandle) and self.media:
            self.media.release(h.drive)
        return 0

    def _handle(self, fi: Any) -> Handle:
        h = self.handles.get(fi.fh)
        if h is None:
            raise fuse.FuseOSError(errno.EBADF)
        return h

    def volumes_in_use(self) -> dict[int, int]:
        return self.handles.volumes_in_use()

    def snapshots_in_use(self) -> dict[int, int]:
        """Open handles per snapshot id (a loop device attached to a member image holds one)."""
        return self.handles.snapshots_in_use()

    # -- data --------------------------------------------------------------------------------
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        """Stats files and media; volume data goes through :meth:`read_into` (the daemon serves
        reads with DirectReadFUSE, which calls read_into; this is mfusepy's stock path)."""
        match self._handle(fi):
            case StatsHandle(data):
                return data[offset : offset + size]
            case MediaHandle(drive) if self.media:
                return self.media.read(drive, size, offset)
        buf = bytearray(size)
        return bytes(buf[: self.read_into(path, memoryview(buf), offset, fi)])

    def read_into(self, path: str, view: memoryview, offset: int, fi: Any) -> int:
        """read() into libfuse's buffer (direct.py): volume and snapshot data is read and verified
        in place; other files are copied in. Returns the bytes filled."""
        h = self._handle(fi)
        if isinstance(h, StatsHandle | MediaHandle):
            data = self.read(path, len(view), offset, fi)
            view[: len(data)] = data
            return len(data)
        self._note_size("read", len(view))
        try:
            if isinstance(h, SnapshotHandle):
                return self.store.read_into(h.vid, offset, view, sid=h.sid)
            t0 = time.perf_counter()
            n = self.store.read_into(h.vid, offset, view)
            self.io.record(h.vid, "read", n, time.perf_counter() - t0)
            return n
        except VstorError as e:
            raise _errno(e) from None

    def write_from(self, path: str, view: memoryview, offset: int, fi: Any) -> int:
        """write() from libfuse's buffer (direct.py): a volume's data goes to the store with no
        copy into a bytes object first. The view is valid only during this call; the store keeps
        nothing of it (the journal copies or sends its records before Store.write returns).
        Tape and disc drives, which may hold data, get bytes (:meth:`write`)."""
        return self.write(path, view, offset, fi)

    def write(self, path: str, data: bytes | memoryview, offset: int, fi: Any) -> int:
        match self._handle(fi):
            case VolumeHandle(target, sync):
                pass
            case MediaHandle(drive) if self.media:
                return self.media.write(drive, bytes(data), offset)
            case SnapshotHandle():
                raise fuse.FuseOSError(errno.EROFS)
            case _:
                raise fuse.FuseOSError(errno.EBADF)
        self._note_size("write", len(data))
        try:
            size = self.store.volume_size(target)
        except VstorError as e:
            raise _errno(e) from None
        if offset >= size:
            raise fuse.FuseOSError(errno.ENOSPC)  # like writing past the end of a disk
        data = data[: size - offset]
        t0 = time.perf_counter()
        try:
            self.store.write(target, offset, data)
        except VstorError as e:
            raise _errno(e) from None
        if sync:  # O_DSYNC: durable before the reply; concurrent writers share one group commit
            self._sync(fi.fh)
        self.io.record(target, "write", len(data), time.perf_counter() - t0)
        return len(data)

    def ioctl(self, path: str, cmd: int, arg: Any, fi: Any, flags: int, data: Any) -> int:
        h = self.handles.get(fi.fh)
        if isinstance(h, MediaHandle) and self.media:
            return self.media.ioctl(h.drive, cmd, data)
        raise fuse.FuseOSError(errno.ENOTTY)

    def fsync(self, path: str, datasync: int, fi: Any) -> int:
        return self._sync(fi.fh)

    def flush(self, path: str, fi: Any) -> int:
        if isinstance(self.handles.get(fi.fh), VolumeHandle):  # snapshot images hold nothing to flush
            return self._sync(fi.fh)
        return 0

    def _sync(self, fh: int) -> int:
        try:
            self.store.sync()
        except VstorError as e:
            raise _errno(e) from None
        seen = self._drops_seen.get(fh)
        if seen is not None and seen != self.store.drops:  # once per handle, as errseq_t
            self._drops_seen[fh] = self.store.drops
            log.error("fsync of %s: EIO once: writes made before a storage outage were dropped when the "
                      "journal resumed (see the daemon log's resume line)", fh)
            raise fuse.FuseOSError(errno.EIO)
        return 0

    def fallocate(self, path: str, mode: int, offset: int, length: int, fi: Any) -> int:
        match self._handle(fi):
            case VolumeHandle(target):
                pass
            case SnapshotHandle():
                raise fuse.FuseOSError(errno.EROFS)
            case _:
                raise fuse.FuseOSError(errno.EBADF)
        if mode & FALLOC_FL_PUNCH_HOLE and not mode & FALLOC_FL_KEEP_SIZE:
            raise fuse.FuseOSError(errno.EINVAL)
        if not mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            raise fuse.FuseOSError(errno.EOPNOTSUPP)  # thin volumes cannot reserve space
        try:
            self.store.trim(target, offset, length)
        except VstorError as e:
            raise _errno(e) from None
        return 0

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        if path[1:] in STATS_FILES:
            raise fuse.FuseOSError(errno.EACCES)
        if path.startswith("/snapshots/"):
            raise fuse.FuseOSError(errno.EROFS)
        if length != self._vol(path).size:
            raise fuse.FuseOSError(errno.EPERM)  # fixed size: use 'vstor volume resize'
        return 0

    # -- helpers -------------------------------------------------------------------------------
    def _note_size(self, kind: str, size: int) -> None:
        bucket = (kind, size_bucket(size))  # every request: no string built (size_bucket is cached)
        if bucket not in self._seen_sizes:
            self._seen_sizes.add(bucket)
            log.info("first %s request of %d bytes", kind, size)

    def _render_stats(self, as_json: bool) -> bytes:
        data = {"counters": self.store.stats.as_dict(), "usage": self.store.usage(), "fuse": self.conn,
                **self.extra_stats()}
        if as_json:
            return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
        lines = []
        for section, values in data.items():
            if isinstance(values, dict):
                for k, v in values.items():
                    lines.append(f"{section}.{k}: {plain(v)}")
            else:
                lines.append(f"{section}: {plain(values)}")
        return ("\n".join(lines) + "\n").encode()


def plain(v: Any) -> str:
    """A value of the text stats file as people read it: ``key=value`` pairs, lists with commas,
    booleans as yes/no, no Python reprs (stats.json keeps the raw values)."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return "-"
    if isinstance(v, dict):
        return " ".join(f"{k}={plain(x)}" for k, x in v.items()) or "-"
    if isinstance(v, list | tuple):
        return ",".join(plain(x) for x in v) or "-"
    return str(v)


def serve(ops: VolumeFS, mountpoint: str, options: dict[str, Any]) -> None:
    """Run the FUSE loop until the filesystem is unmounted."""
    DirectReadFUSE(ops, mountpoint, raw_fi=True, **options)
