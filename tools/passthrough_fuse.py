"""Bare mfusepy passthrough file server: the baseline of the benchmark (tools/bench_fio.py).

    python -m tools.passthrough_fuse BACKING_FILE MOUNTDIR [--stats] [--copy-read]

Serves MOUNTDIR/img as a passthrough of BACKING_FILE with os.pread/os.pwrite on one fd, under
exactly the FUSE options vstor's own export uses (vstor/fuse/options.py), so the difference
between the two is vstor's work rather than FUSE tuning. Like vstor, fsync and flush (close)
both become fdatasync. Prints READY on stdout once the kernel has initialised the mount;
SIGTERM or SIGINT (handled by libfuse in foreground mode) unmount it cleanly.
--stats prints a histogram of read/write request sizes to stderr on unmount.

Reads use the same binding as vstor: vstor/fuse/direct.py's DirectReadFUSE, whose read
callback lets ``read_into`` fill libfuse's buffer (here one preadv). ``--copy-read`` keeps
mfusepy's stock callback instead, which takes bytes from ``read`` and copies them into that
buffer: the baseline that bench_fio ran before vstor used DirectReadFUSE (target
"passthrough-copy").
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import errno
import os
import stat
import sys
import threading
import time
from typing import Any

from vstor.fuse import options

options.select_library()
import mfusepy  # noqa: E402  (must come after select_library)

from vstor.fuse.direct import DirectReadFUSE  # noqa: E402

IMAGE = "/img"
STATFS_BSIZE = 512 * 1024
FUSE_MAIN_LOOP_ENDED = 8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


class Passthrough(mfusepy.Operations):
    use_ns = True

    def __init__(self, backing: str, mountdir: str, stats: bool = False) -> None:
        self.fd = os.open(backing, os.O_RDWR)
        self.mountdir = mountdir
        self.started = time.time_ns()
        self.stats: dict[str, collections.Counter[int]] | None = (
            {"read": collections.Counter(), "write": collections.Counter()} if stats else None
        )
        self.stats_lock = threading.Lock()

    # --- lifecycle ---------------------------------------------------------------------------
    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        agreed = options.tune_connection(conn_info)
        options.after_init(self.mountdir, lambda: print(f"READY {agreed}", flush=True))

    def destroy(self, path: str) -> None:
        if self.stats is not None:
            for op, hist in self.stats.items():
                sizes = ", ".join(f"{size // 1024}K x{count}" for size, count in sorted(hist.items()))
                print(f"passthrough {op} request sizes: {sizes or 'none'}", file=sys.stderr, flush=True)
        os.close(self.fd)

    # --- namespace: a root directory holding one file ----------------------------------------
    def _check(self, path: str) -> None:
        if path != IMAGE:
            raise mfusepy.FuseOSError(errno.ENOENT)

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        times = {"st_atime": self.started, "st_mtime": self.started, "st_ctime": self.started}
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, **times}
        self._check(path)
        st = os.fstat(self.fd)
        return {
            "st_mode": stat.S_IFREG | 0o644,
            "st_nlink": 1,
            "st_size": st.st_size,
            "st_blocks": st.st_blocks,
            "st_blksize": STATFS_BSIZE,  # as vstor: its chunk size
            "st_atime": st.st_atime_ns,
            "st_mtime": st.st_mtime_ns,
            "st_ctime": st.st_ctime_ns,
        }

    def readdir(self, path: str, fh: int) -> list[str]:
        if path != "/":
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return [".", "..", IMAGE[1:]]

    def statfs(self, path: str) -> dict[str, int]:
        vfs, st = os.fstatvfs(self.fd), os.fstat(self.fd)
        unallocated = max(0, st.st_size - st.st_blocks * 512)
        free = min(unallocated, vfs.f_bavail * vfs.f_frsize) // STATFS_BSIZE
        return {
            "f_bsize": STATFS_BSIZE,
            "f_frsize": STATFS_BSIZE,
            "f_blocks": st.st_size // STATFS_BSIZE,
            "f_bfree": free,
            "f_bavail": free,
            "f_files": 1,
            "f_ffree": 0,
            "f_namemax": 255,
        }

    # --- data path -----------------------------------------------------------------------------
    def open(self, path: str, flags: int) -> int:
        self._check(path)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if self.stats is not None:
            self._count("read", size)
        return os.pread(self.fd, size, offset)

    def read_into(self, path: str, view: memoryview, offset: int, fh: int) -> int:
        if self.stats is not None:
            self._count("read", len(view))
        return os.preadv(self.fd, [view], offset)

    def write(self, path: str, data: bytes | memoryview, offset: int, fh: int) -> int:
        if self.stats is not None:
            self._count("write", len(data))
        return os.pwrite(self.fd, data, offset)

    def write_from(self, path: str, view: memoryview, offset: int, fh: int) -> int:
        """DirectReadFUSE's write from libfuse's buffer (no copy first), as vstor's."""
        return self.write(path, view, offset, fh)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self._check(path)
        os.ftruncate(self.fd, length)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        os.fdatasync(self.fd)
        return 0

    def flush(self, path: str, fh: int) -> int:
        os.fdatasync(self.fd)  # as vstor: close() is a durability point
        return 0

    def release(self, path: str, fh: int) -> int:
        return 0

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        if _libc.fallocate(self.fd, mode, offset, size) != 0:
            raise mfusepy.FuseOSError(ctypes.get_errno())
        return 0

    def _count(self, op: str, size: int) -> None:
        assert self.stats is not None
        with self.stats_lock:
            self.stats[op][size] += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backing", help="existing file to serve")
    parser.add_argument("mountdir", help="empty directory; the file appears as MOUNTDIR/img")
    parser.add_argument("--stats", action="store_true", help="print request-size histograms on exit")
    parser.add_argument("--copy-read", action="store_true",
                        help="mfusepy's stock read callback (bytes, then a copy) instead of vstor's DirectReadFUSE")
    args = parser.parse_args(argv)
    ops = Passthrough(args.backing, args.mountdir, stats=args.stats)
    options.set_io_flusher()
    try:
        server = mfusepy.FUSE if args.copy_read else DirectReadFUSE
        server(ops, args.mountdir, **options.mount_options("passthrough"))
    except RuntimeError as exc:
        # fuse_main_real() returns 8 when its loop ended because of SIGTERM/SIGINT/SIGHUP
        # (libfuse stores the signal as the session error); the mount is gone by then.
        if exc.args != (FUSE_MAIN_LOOP_ENDED,):
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
