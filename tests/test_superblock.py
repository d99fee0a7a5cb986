"""Pool init: the journal segment size follows the pool's filesystem unless it is given.

The default is 256 MiB; on a small filesystem it is the largest power of two at most 1/64 of
it (at least 16 MiB), so that the space reserve of two segments stays near 3%. The
filesystem test mounts a real tmpfs of a known size.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from harness import VSTOR, one_error_line, run

from vstor.store.superblock import auto_segment_size, filesystem_bytes, load_superblock

MiB, GiB = 1 << 20, 1 << 30


@pytest.mark.parametrize(("fs", "segment"), [
    (100 * MiB, 16 * MiB),  # never below the minimum
    (1 * GiB, 16 * MiB),
    (2 * GiB, 32 * MiB),
    (3 * GiB, 32 * MiB),  # 48 MiB rounds down to a power of two
    (4 * GiB, 64 * MiB),
    (16 * GiB, 256 * MiB),
    (252 * GiB, 256 * MiB),  # never above the default
])
def test_auto_segment_size_follows_the_filesystem(fs, segment):
    assert auto_segment_size(fs) == segment


def test_filesystem_bytes_of_a_path_not_yet_made(tmp_path):
    assert filesystem_bytes(str(tmp_path / "a" / "b")) == filesystem_bytes(str(tmp_path)) > 0


@pytest.fixture
def small_fs(tmp_path):
    """A 2 GiB tmpfs (it takes memory only for what is written), unmounted afterwards."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=2G", "vstor-test", str(mnt)])
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_pool_init_sizes_segments_for_its_filesystem(small_fs):
    out = run([VSTOR, "pool", "init", str(small_fs / "auto")]).stdout
    assert "segment 32M" in out, out
    assert load_superblock(str(small_fs / "auto")).segment_size == 32 * MiB
    given = json.loads(run([VSTOR, "pool", "init", str(small_fs / "given"), "--segment-size", "128M",
                            "--json"]).stdout)
    assert given["segment_size"] == 128 * MiB
    assert load_superblock(str(small_fs / "given")).segment_size == 128 * MiB


@pytest.mark.parametrize("size", ["8M", "5G", "auto2", "0"])
def test_pool_init_refuses_a_bad_segment_size(tmp_path, size):
    r = run([VSTOR, "pool", "init", str(tmp_path / "p"), "--segment-size", size], check=False)
    assert "segment size" in one_error_line(r, f"--segment-size {size}")
    assert not (tmp_path / "p" / "pool.json").exists()
