"""libfuse's worker threads keep their Python thread state between requests (vstor/fuse/threadstate.py).

A tiny filesystem served by vstor's FUSE binding (DirectReadFUSE) in a child process answers
each lookup with a size of 1 when the serving thread's ``threading.local`` already held a mark
from an earlier request, else 0 (and sets the mark). With the state kept, every request after a
thread's first finds its mark; with ``keep_tstate=0`` (the state made and deleted per request,
as ctypes does for a foreign thread) none does: the control run shows the test can tell.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fusekit import served

SERVER = r"""
import errno, stat, sys, threading
from vstor.fuse.direct import DirectReadFUSE, fuse

class Marks(fuse.Operations):
    def __init__(self):
        self.local = threading.local()

    def getattr(self, path, fh=None):
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        seen = getattr(self.local, "mark", False)
        self.local.mark = True
        return {"st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_size": int(seen)}

DirectReadFUSE(Marks(), sys.argv[1], foreground=True, attr_timeout=0, entry_timeout=0, negative_timeout=0)
"""

LOOKUPS = 200


def _serve_and_look_up(tmp_path: Path, tuning: str) -> list[int]:
    with served(tmp_path / "mnt", SERVER, tuning=tuning) as mnt:
        return [os.stat(mnt / f"f{i}").st_size for i in range(LOOKUPS)]


@pytest.mark.root
def test_worker_threads_keep_their_python_state_between_requests(tmp_path: Path) -> None:
    sizes = _serve_and_look_up(tmp_path / "kept", "")
    assert sum(sizes) >= LOOKUPS - 32, f"only {sum(sizes)} of {LOOKUPS} requests found their thread's state"
    control = _serve_and_look_up(tmp_path / "per-request", "keep_tstate=0")
    assert sum(control) == 0, "with a state per request no request may see an earlier one's mark"
