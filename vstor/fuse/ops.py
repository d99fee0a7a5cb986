"""mfusepy Operations exporting the pool's volumes as fixed-size image files.

    /volumes/<name>   read-write image of each volume
    /stats            array counters as text; /stats.json the same as JSON

Thin adapter: it maps FUSE calls to Store calls and VstorError to errno, nothing more.
fsync and flush both make the journal durable (never ENOSYS: the kernel would then treat
every later fsync as a success, and ext4 on a loop device would lose its barriers).
"""

from __future__ import annotations

import errno
import json
import logging
import stat
import threading
from collections.abc import Callable
from typing import Any

from vstor.fuse.options import select_library, tune_connection, tuning

select_library()
import mfusepy as fuse  # noqa: E402

from vstor.errors import NotFound, VstorError  # noqa: E402
from vstor.store.stats import size_bucket  # noqa: E402
from vstor.store.store import Store  # noqa: E402

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
                 extra_stats: Callable[[], dict] | None = None) -> None:
        self.store = store
        self.on_ready = on_ready
        self.extra_stats = extra_stats or dict
        self.conn: dict[str, int] = {}
        self._lock = threading.Lock()
        self._handles: dict[int, Any] = {}  # fh -> volume id, or bytes for a stats snapshot
        self._next_fh = 1
        self.open_count: dict[int, int] = {}
        self._seen_sizes: set[str] = set()
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

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        if path in ("/", "/volumes"):
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        if path[1:] in STATS_FILES:
            return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": 0}
        vol = self._vol(path)
        ns = int(vol.created * 1e9)
        return {
            "st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": vol.size,
            "st_blksize": self.blksize, "st_blocks": self.store.volume_usage(vol.id) // 512,
            "st_mtime": ns, "st_ctime": ns, "st_atime": ns,
        }

    def readdir(self, path: str, fh: int) -> list[str]:
        if path == "/":
            return [".", "..", "volumes", *STATS_FILES]
        if path == "/volumes":
            return [".", "..", *(v.name for v in self.store.volumes())]
        raise fuse.FuseOSError(errno.ENOTDIR)

    def statfs(self, path: str) -> dict[str, int]:
        cs = self.statfs_bsize
        used = self.store.usage()["journal_bytes"]
        free = self.store.space.free_bytes()
        return {"f_bsize": cs, "f_frsize": cs, "f_blocks": (used + free) // cs, "f_bfree": free // cs,
                "f_bavail": free // cs, "f_namemax": 255}

    # -- handles -----------------------------------------------------------------------------
    def open(self, path: str, fi: Any) -> int:
        if path[1:] in STATS_FILES:
            target: Any = self._render_stats(path == "/stats.json")
            fi.direct_io = 1
        else:
            vol = self._vol(path)
            target = vol.id
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = target
            if isinstance(target, int):
                self.open_count[target] = self.open_count.get(target, 0) + 1
        fi.fh = fh
        return 0

    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            target = self._handles.pop(fi.fh, None)
            if isinstance(target, int):
                self.open_count[target] -= 1
                if not self.open_count[target]:
                    del self.open_count[target]
        return 0

    def _target(self, fi: Any) -> Any:
        target = self._handles.get(fi.fh)
        if target is None:
            raise fuse.FuseOSError(errno.EBADF)
        return target

    def volumes_in_use(self) -> dict[int, int]:
        with self._lock:
            return dict(self.open_count)

    # -- data --------------------------------------------------------------------------------
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        target = self._target(fi)
        if isinstance(target, bytes):
            return target[offset : offset + size]
        self._note_size("read", size)
        try:
            return self.store.read(target, offset, size)
        except VstorError as e:
            raise _errno(e) from None

    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        target = self._target(fi)
        if not isinstance(target, int):
            raise fuse.FuseOSError(errno.EBADF)
        self._note_size("write", len(data))
        try:
            size = self.store.state.table.by_id[target].size
        except KeyError:
            raise fuse.FuseOSError(errno.ENOENT) from None
        if offset >= size:
            raise fuse.FuseOSError(errno.ENOSPC)  # like writing past the end of a disk
        data = data[: size - offset]
        try:
            self.store.write(target, offset, data)
        except VstorError as e:
            raise _errno(e) from None
        return len(data)

    def fsync(self, path: str, datasync: int, fi: Any) -> int:
        return self._sync()

    def flush(self, path: str, fi: Any) -> int:
        if isinstance(self._handles.get(fi.fh), int):
            return self._sync()
        return 0

    def _sync(self) -> int:
        try:
            self.store.sync()
        except VstorError as e:
            raise _errno(e) from None
        return 0

    def fallocate(self, path: str, mode: int, offset: int, length: int, fi: Any) -> int:
        target = self._target(fi)
        if not isinstance(target, int):
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
        if length != self._vol(path).size:
            raise fuse.FuseOSError(errno.EPERM)  # fixed size: use 'vstor volume resize'
        return 0

    # -- helpers -------------------------------------------------------------------------------
    def _note_size(self, kind: str, size: int) -> None:
        bucket = f"{kind} {size_bucket(size)}"
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
                    lines.append(f"{section}.{k}: {v}")
            else:
                lines.append(f"{section}: {values}")
        return ("\n".join(lines) + "\n").encode()


def serve(ops: VolumeFS, mountpoint: str, options: dict[str, Any]) -> None:
    """Run the FUSE loop until the filesystem is unmounted."""
    fuse.FUSE(ops, mountpoint, raw_fi=True, **options)
