"""The FUSE connection asks for no automatic page cache invalidation (vstor/fuse/options.py).

With libfuse3's default FUSE_CAP_AUTO_INVAL_DATA, the kernel sends a GETATTR before each
buffered read that follows a write, to compare the file's mtime. A volume's image never
changes behind the kernel's back, so for vstor that was one more round trip per read after a
write. A tiny filesystem served by vstor's binding and connection tuning, in a child process,
counts the GETATTRs of its one file (in a file beside the mount) while the test
alternates writes and reads through one open descriptor; the control run with
``auto_inval_data=1`` shows the test can tell.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fusekit import served

SERVER = r"""
import errno, stat, sys
from vstor.fuse import options
from vstor.fuse.direct import DirectReadFUSE, fuse

SIZE = 1 << 20

class Counting(fuse.Operations):
    def __init__(self):
        self.data = bytearray(SIZE)
        self.getattrs = 0

    def init_with_config(self, conn, config):
        options.tune_connection(conn)

    def getattr(self, path, fh=None):
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        if path != "/img":
            raise fuse.FuseOSError(errno.ENOENT)
        self.getattrs += 1
        with open(sys.argv[2], "w") as f:  # outside the mount: no cache of ours in the way
            f.write(str(self.getattrs))
        return {"st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_size": SIZE, "st_mtime": 1}

    def open(self, path, flags):
        return 1

    def read(self, path, size, offset, fh):  # registers the callback; DirectReadFUSE calls read_into
        return bytes(self.data[offset : offset + size])

    def read_into(self, path, view, offset, fh):
        n = max(0, min(len(view), SIZE - offset))
        view[:n] = self.data[offset : offset + n]
        return n

    def write(self, path, data, offset, fh):
        self.data[offset : offset + len(data)] = data
        return len(data)

DirectReadFUSE(Counting(), sys.argv[1], foreground=True, max_read=options.MAX_REQUEST)
"""

ROUNDS = 200


def _getattrs_while_mixing(tmp_path: Path, tuning: str) -> int:
    """GETATTRs of the file during ROUNDS writes, each followed by a read elsewhere."""
    count = tmp_path / "getattrs"
    with served(tmp_path / "mnt", SERVER, str(count), tuning=tuning) as mnt:
        fd = os.open(mnt / "img", os.O_RDWR)
        try:
            before = int(count.read_text())
            for i in range(ROUNDS):
                os.pwrite(fd, b"w" * 4096, (i % 128) * 8192)
                assert os.pread(fd, 4096, (i % 128) * 8192 + 4096) == bytes(4096)
            return int(count.read_text()) - before
        finally:
            os.close(fd)


@pytest.mark.root
def test_reads_after_writes_cost_no_getattr(tmp_path: Path) -> None:
    quiet = _getattrs_while_mixing(tmp_path / "off", "")
    assert quiet <= 5, f"{quiet} GETATTRs for {ROUNDS} reads after writes"
    control = _getattrs_while_mixing(tmp_path / "on", "auto_inval_data=1")
    assert control >= ROUNDS // 2, f"with auto_inval_data on, only {control} GETATTRs: the test cannot tell"
