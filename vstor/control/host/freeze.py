"""fsfreeze around a snapshot: an application-consistent cut of mounted filesystems.

A snapshot is always crash-consistent: it holds exactly the writes acknowledged before it.
A filesystem mounted on a volume then looks as after a power cut, and its journal must be
replayed before use. Freezing it first (``fsfreeze -f``) makes the filesystem flush its
journal and metadata and block new writes, so the snapshot needs no recovery.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator

from vstor.errors import ExternalToolError, UsageError

log = logging.getLogger("vstor.freeze")


@contextlib.contextmanager
def frozen(mountpoints: list[str]) -> Iterator[None]:
    """Freeze each mount point, then thaw them all on the way out, whatever happens."""
    done: list[str] = []
    try:
        for mp in mountpoints:
            if not os.path.ismount(mp):
                raise UsageError(f"--freeze {mp}: not a mount point")
            r = subprocess.run(["fsfreeze", "-f", mp], capture_output=True, text=True)
            if r.returncode:
                raise ExternalToolError(f"fsfreeze -f {mp} failed: {r.stderr.strip() or r.returncode}")
            done.append(mp)
        yield
    finally:
        for mp in reversed(done):
            r = subprocess.run(["fsfreeze", "-u", mp], capture_output=True, text=True)
            if r.returncode:
                log.error("fsfreeze -u %s failed: %s; thaw it by hand", mp, r.stderr.strip())
