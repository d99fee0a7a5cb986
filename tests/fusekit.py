"""A tiny FUSE server run in a child process with vstor's binding, for tests of the binding's
tuning (tests/test_fuse_threadstate.py, tests/test_fuse_cache.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vstor.control.host.mounts import unmount

__all__ = ["served"]


@contextmanager
def served(mnt: Path, script: str, *args: str, tuning: str = "") -> Iterator[Path]:
    """Run ``script`` (Python source taking the mount point, then ``args``, from sys.argv) with
    VSTOR_FUSE_TUNING=``tuning``; yield ``mnt`` once it is mounted. Unmounts and kills the
    server afterwards, also when the test fails."""
    mnt.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent), VSTOR_FUSE_TUNING=tuning)
    proc = subprocess.Popen([sys.executable, "-c", script, str(mnt), *args], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else ""
                raise AssertionError(f"the FUSE server did not mount: {err}")
            time.sleep(0.05)
        yield mnt
    finally:
        if os.path.ismount(mnt):
            unmount(str(mnt))
        proc.kill()
        proc.wait(timeout=10)
