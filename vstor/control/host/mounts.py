"""Mount-point helpers around fusermount3 and /proc/self/mountinfo."""

from __future__ import annotations

import errno
import os
import subprocess

from vstor.errors import Busy, ExternalToolError, UsageError


def fuse_source(path: str) -> str | None:
    """The source (fsname) of the FUSE filesystem mounted at ``path``, or None."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if pre.split()[4].encode().decode("unicode_escape") == target and post.startswith("fuse"):
                return post.split()[1].encode().decode("unicode_escape")
    return None


def fuse_mounted(path: str) -> bool:
    return fuse_source(path) is not None


def fsname_for(pool: str) -> str:
    return "vstor:" + os.path.abspath(pool)


def prepare_mountpoint(path: str, pool: str) -> None:
    """Create the mount directory, first clearing a stale FUSE mount left by a killed daemon.

    The caller holds the pool lock, so a mount of this pool's fsname is stale by definition;
    any other FUSE mount is stale only if its connection is dead (statvfs is never cached).
    """
    source = fuse_source(path)
    if source is not None:
        stale = source == fsname_for(pool)
        if not stale:
            try:
                os.statvfs(path)
            except OSError as e:
                stale = e.errno == errno.ENOTCONN
        if not stale:
            raise Busy(f"{path} is already a mounted FUSE filesystem ({source}); choose another --mount directory")
        subprocess.run(["fusermount3", "-uz", path], check=False, capture_output=True)
    elif os.path.ismount(path):
        raise Busy(f"{path} is already a mount point; choose another --mount directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot use mount point {path}: {e.strerror}") from None


def unmount(path: str, lazy: bool = False) -> None:
    cmd = ["fusermount3", "-u", *(["-z"] if lazy else []), path]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        msg = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        if "busy" in msg.lower():
            raise Busy(f"mount {path} is busy ({msg}); close or detach what uses it")
        raise ExternalToolError(f"fusermount3 -u {path} failed: {msg}")
