"""FUSE binding and tuning shared by vstor's export and the benchmark's bare passthrough,
so the two are compared under identical options.

Measured choices (docs/benchmarks.md):
  * libfuse3 (FUSE_LIBRARY_NAME=fuse3): requests up to 1 MiB. libfuse2 without big_writes
    sends 4 KiB writes (about 90 MB/s).
  * max_read is both a mount option and conn.max_read: libfuse3 refuses to start when the
    two differ ("init() and fuse_session_new() requested different maximum read size").
  * max_write stays at what libfuse sized its buffer for (1 MiB); more kills the session
    with "reading device: Invalid argument".
  * Queue depth: the kernel keeps at most ``max_background`` asynchronous requests (libaio and
    io_uring direct I/O, readahead) in flight to the server (12 by default) and libfuse 3.14
    serves with at most ``max_threads`` threads (10); 16 O_DSYNC writes in flight then reach
    vstor's group commit 10 at a time at most. 64 and 32 (benchmarks.md §13: 4 KiB O_DSYNC
    writes at QD16 on a RADOS pool, 1,029 -> 1,673 IOPS in one loaded run). Fewer threads, so
    that each request lands on a thread woken recently, did not help reads: with 4, the aged
    phase's warm 4 KiB reads ran 12.8-15.7k IOPS against 12.4-16.1k with 32, and its first
    sequential pass 207-295 MB/s against 246-270 (four alternating pairs, vstor alone).
  * No FUSE_CAP_AUTO_INVAL_DATA (libfuse3 asks for it by default). With it, the kernel asks
    the server for the file's attributes before every buffered read that follows a write
    (each write marks the cached size and mtime stale), to drop the page cache if the mtime
    moved. Nothing changes a volume's image behind the kernel's back (its mtime is constant:
    vstor/fuse/ops.py), so for vstor it was a GETATTR round trip per read after a write: under
    the 4 KiB 70/30 mixed load 0.7 GETATTRs per write, a sixth of all requests (benchmarks.md
    §12). The kernel still refreshes the size when the attributes expire (1 s) and before a
    read past the cached end, and drops an image's page cache when it is opened.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from vstor.errors import UsageError

MAX_REQUEST = 1 << 20
MAX_THREADS = 32
MAX_BACKGROUND = 64
PR_SET_IO_FLUSHER = 57
READAHEAD_KB = 1024
FUSE_CAP_AUTO_INVAL_DATA = 1 << 12  # libfuse3's fuse_common.h

# Benchmark-only overrides of the choices above, to measure each one against its alternative
# (tools/bench_tuning.py): VSTOR_FUSE_TUNING="threads=0,max_write=131072,readahead_kb=128,
# blksize=4096,statfs_bsize=4096,io_flusher=0,keep_tstate=0,auto_inval_data=1". Unset in normal use.
TUNING_KEYS = ("threads", "max_write", "readahead_kb", "blksize", "statfs_bsize", "io_flusher", "max_threads",
               "max_background", "keep_tstate", "auto_inval_data")


def tuning() -> dict[str, int]:
    out: dict[str, int] = {}
    for item in filter(None, os.environ.get("VSTOR_FUSE_TUNING", "").split(",")):
        key, _, value = item.partition("=")
        if key not in TUNING_KEYS or not value.isdigit():
            raise UsageError(f"bad VSTOR_FUSE_TUNING item {item!r}: use KEY=N with KEY in {TUNING_KEYS}")
        out[key] = int(value)
    return out

log = logging.getLogger("vstor.fuse")


def select_library() -> None:
    """Pick libfuse3 unless the user chose otherwise. Must run before mfusepy is imported."""
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")


def mount_options(fsname: str, threads: bool = True) -> dict[str, Any]:
    """Keyword options for ``mfusepy.FUSE``."""
    threads_cap = {"max_threads": tuning().get("max_threads", MAX_THREADS)} if _has_max_threads() else {}
    return {
        **threads_cap,  # libfuse's -o max_threads (3.12 and later; older ones refuse the option)
        "foreground": True,
        "nothreads": not (threads and tuning().get("threads", 1)),
        "max_read": MAX_REQUEST,
        "fsname": fsname,
        "default_permissions": True,
    }


def _has_max_threads() -> bool:
    import mfusepy
    return (mfusepy.fuse_version_major, mfusepy.fuse_version_minor) >= (3, 12)


def tune_connection(conn: Any) -> dict[str, int]:
    """Called from init_with_config: negotiate the request size, the background queue and the
    cache rules above. Returns what was agreed."""
    if conn is not None:
        conn.max_read = MAX_REQUEST
        conn.max_write = min(conn.max_write or MAX_REQUEST, tuning().get("max_write", MAX_REQUEST))
        conn.max_background = tuning().get("max_background", MAX_BACKGROUND)
        conn.congestion_threshold = conn.max_background * 3 // 4
        if not tuning().get("auto_inval_data", 0):
            conn.want &= ~FUSE_CAP_AUTO_INVAL_DATA
        agreed = {"max_write": int(conn.max_write), "max_read": int(conn.max_read),
                  "max_background": int(conn.max_background)}
        log.info("FUSE automatic page cache invalidation: %s",
                 "on" if conn.want & FUSE_CAP_AUTO_INVAL_DATA else "off")
    else:
        agreed = {}
    log.info("FUSE connection: %s", agreed)
    return agreed


def set_readahead(mountpoint: str, kb: int | None = None) -> int | None:
    """Raise the FUSE mount's readahead window so buffered sequential reads arrive as 1 MiB
    requests: with the default 128 KiB window they arrive as 256 KiB, and a bare passthrough
    read 523 MB/s against 1,525 MB/s with 1 MiB (measured here).

    The device number comes from /proc/self/mountinfo, not stat(): this runs inside the
    FUSE server, and a stat of its own mount point would be a request to itself.
    Returns the window set, or None if the mount or its bdi was not found."""
    kb = kb or tuning().get("readahead_kb", READAHEAD_KB)
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4].encode().decode("unicode_escape") == target and " - fuse" in line:
                try:
                    with open(f"/sys/class/bdi/{parts[2]}/read_ahead_kb", "w") as ra:
                        ra.write(str(kb))
                except OSError as e:
                    log.warning("cannot set readahead on %s: %s", mountpoint, e)
                    return None
                log.info("readahead of %s set to %d KiB", mountpoint, kb)
                return kb
    return None


def after_init(mountpoint: str, then: Callable[[], None] | None = None) -> None:
    """From the init callback: once the kernel has processed the INIT reply (which caps the
    readahead window at the negotiated value), raise readahead, then call ``then``.

    A stat of the mount point from a separate thread is the sync point: the kernel sends no
    request before INIT completes, so the stat returns only after it."""

    def run() -> None:
        try:
            os.stat(mountpoint)
            set_readahead(mountpoint)
        finally:
            if then:
                then()

    threading.Thread(target=run, name="fuse-after-init", daemon=True).start()


def set_io_flusher() -> bool:
    """prctl(PR_SET_IO_FLUSHER): lets the kernel treat this process as part of the I/O path,
    so memory reclaim does not wait on the writeback it is serving (loop over FUSE)."""
    if not tuning().get("io_flusher", 1):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0:
        log.warning("PR_SET_IO_FLUSHER failed: %s", os.strerror(ctypes.get_errno()))
        return False
    return True
