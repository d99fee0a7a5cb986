"""The kernel's read-ahead of segment files, and the NBD stream read-ahead that defers to it
(vstor/store/journal/segread.py device_readahead, vstor/nbd/serving/reads.py): on ext4 on
loop devices whose read_ahead_kb each test sets, so that what the page cache holds comes only
from the reads and from what vstor asked for."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbdkit import handle, nbd, served
from poolkit import MiB, cached_bytes, evict_segments

from vstor.store.journal.segread import device_readahead
from vstor.store.reads.ahead import AHEAD

pytestmark = [pytest.mark.local_only("the page cache of local segment files"),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, mount)")]

WAIT = 10.0  # seconds for the kernel to read what a WILLNEED asked for (milliseconds here)


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def _loop_ext4(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """ext4 on a new 128 MiB loop device, mounted: (mount point, the device's name, whose
    queue/read_ahead_kb the test sets). Torn down after, also when the test fails."""
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(128 * MiB)
    disk = _run("losetup", "--find", "--show", str(img))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = False
    try:
        _run("mkfs.ext4", "-q", "-F", disk)
        _run("mount", disk, str(mnt))
        mounted = True
        yield mnt, os.path.basename(disk)
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False)
        subprocess.run(["losetup", "-d", disk], check=False)


def _set_readahead(disk: str, kib: int) -> None:
    Path(f"/sys/block/{disk}/queue/read_ahead_kb").write_text(f"{kib}\n")


def test_device_readahead_is_the_read_ahead_of_the_device_under_the_filesystem(tmp_path) -> None:
    with _loop_ext4(tmp_path) as (mnt, disk):
        for kib in (4096, 256, 0):
            _set_readahead(disk, kib)
            assert device_readahead(str(mnt)) == kib << 10
    assert device_readahead("/dev/shm") == 0  # tmpfs: no block device to ask
    assert device_readahead(str(tmp_path / "gone")) == 0


def test_device_readahead_of_a_partition_is_its_disks(tmp_path) -> None:
    """This kernel reads no partition tables, so the sysfs of a partition is built here as
    the kernel lays it out: dev/block/MAJ:MIN links to the partition's directory, inside its
    disk's, and only the disk has a queue."""
    dev = os.stat(tmp_path).st_dev
    sysfs = tmp_path / "sys"
    part = sysfs / "devices" / "virtual" / "block" / "vdx" / "vdx1"
    part.mkdir(parents=True)
    (part.parent / "queue").mkdir()
    (part.parent / "queue" / "read_ahead_kb").write_text("512\n")
    (sysfs / "dev" / "block").mkdir(parents=True)
    (sysfs / "dev" / "block" / f"{os.major(dev)}:{os.minor(dev)}").symlink_to("../../devices/virtual/block/vdx/vdx1")
    assert device_readahead(str(tmp_path), str(sysfs)) == 512 << 10
    (part / "queue").mkdir()  # a whole disk's own queue comes first
    (part / "queue" / "read_ahead_kb").write_text("64\n")
    assert device_readahead(str(tmp_path), str(sysfs)) == 64 << 10


def _stream_two_mib(s) -> int:
    """Evict the pool's pages, read [0, 2) MiB of the export in two sequential 1 MiB reads,
    and return how many bytes the page cache gained (the two reads' records and whatever was
    asked for past them)."""
    evict_segments(s.pool)
    before = cached_bytes(s.pool)
    h = handle(s.uri("vol"))
    try:
        h.pread(MiB, 0)
        h.pread(MiB, MiB)  # continues the stream: the server may ask for [2, 2 + AHEAD) MiB
        deadline = time.monotonic() + 0.3  # what is asked for arrives in milliseconds
        while time.monotonic() < deadline and cached_bytes(s.pool) - before < 2 * MiB + AHEAD:
            time.sleep(0.01)
        return cached_bytes(s.pool) - before
    finally:
        h.shutdown()


@pytest.mark.skipif(nbd is None, reason="needs python3-libnbd (make setup)")
def test_an_nbd_stream_asks_for_large_records_only_past_the_kernels_read_ahead(tmp_path) -> None:
    assert AHEAD >= 2 * MiB
    with _loop_ext4(tmp_path) as (mnt, disk):
        # The device reads nothing ahead: the stream's next MiBs are asked for, large records too.
        _set_readahead(disk, 0)
        (mnt / "a").mkdir()
        with served(mnt / "a", volumes={"vol": 16 * MiB}) as s:
            s.written(16 * MiB)
            assert s.store.journal.kernel_readahead == 0
            gained = _stream_two_mib(s)
            assert gained >= 2 * MiB + AHEAD - MiB // 2, gained
        # The device reads further ahead than the stream would ask: vstor leaves it to the
        # kernel. Its read-ahead is then turned off, so nothing past the reads comes in.
        _set_readahead(disk, (2 * AHEAD) >> 10)
        (mnt / "b").mkdir()
        with served(mnt / "b", volumes={"vol": 16 * MiB}) as s:
            s.written(16 * MiB)
            assert s.store.journal.kernel_readahead == 2 * AHEAD
            _set_readahead(disk, 0)
            gained = _stream_two_mib(s)
            assert 2 * MiB <= gained < 2 * MiB + MiB // 2, gained
