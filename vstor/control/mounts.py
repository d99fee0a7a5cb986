"""Mount-point helpers around fusermount3 and /proc/self/mountinfo."""

from __future__ import annotations

import errno
import os
import subprocess

from vstor.errors import Busy, ExternalToolError, UsageError


def fuse_mounted(path: str) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4].encode().decode("unicode_escape") == target and " - fuse" in line:
                return True
    return False


def prepare_mountpoint(path: str) -> None:
    """Create the mount directory, first clearing a stale FUSE mount left by a killed daemon."""
    if fuse_mounted(path):
        try:
            os.stat(path)
        except OSError as e:
            if e.errno != errno.ENOTCONN:
                raise
            subprocess.run(["fusermount3", "-uz", path], check=False, capture_output=True)
        else:
            raise Busy(f"{path} is already a mounted FUSE filesystem; choose another --mount directory")
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
