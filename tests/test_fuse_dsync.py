"""A volume image opened with O_DSYNC (or O_SYNC) is write-through: each write is durable before
vstor answers it, as FUA over NBD. The kernel's FUSE sends an FSYNC after a *synchronous* write
to such a file, but none after an asynchronous direct one (libaio, io_uring: the write
completes later, and generic_write_sync is skipped), so vstor must honour the open flag itself,
or a database's O_DSYNC writes would be acknowledged from memory. In process with the FUSE
operations, then through a real mount with fio's libaio engine."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import types
from pathlib import Path

import pytest
from poolkit import MiB, make_pool

from vstor.faults import Faults
from vstor.fuse.ops import VolumeFS  # selects the FUSE library before mfusepy is imported
from vstor.store.store import Store

K4 = 4096


def _fi(flags: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(flags=flags, fh=0, direct_io=0)


def test_an_o_dsync_handle_is_durable_when_the_write_returns(tmp_path: Path) -> None:
    store = Store.open(make_pool(tmp_path))
    try:
        store.create_volume("v", 8 * MiB)
        fs = VolumeFS(store)
        plain, dsync, osync = _fi(os.O_RDWR), _fi(os.O_RDWR | os.O_DSYNC), _fi(os.O_RDWR | os.O_SYNC)
        for fi in (plain, dsync, osync):
            fs.open("/volumes/v", fi)
        fs.write("/volumes/v", b"a" * K4, 0, plain)
        assert store.journal.durable_position() < store.journal.tail()  # plain: durable at fsync
        for n, fi in enumerate((dsync, osync), 1):
            fs.write("/volumes/v", bytes([n]) * K4, n * K4, fi)
            assert store.journal.durable_position() == store.journal.tail()  # the plain write's too
            fs.write("/volumes/v", b"b" * K4, 0, plain)
    finally:
        store.close()


def test_an_o_dsync_write_whose_commit_fails_fails(tmp_path: Path) -> None:
    """The host learns of a failed commit from the write itself, not from a later fsync."""
    import mfusepy as fuse  # after vstor.fuse.ops chose the library

    faults = Faults()
    store = Store.open(make_pool(tmp_path), faults=faults)
    try:
        store.create_volume("v", 8 * MiB)
        fs = VolumeFS(store)
        plain, dsync = _fi(os.O_RDWR), _fi(os.O_RDWR | os.O_DSYNC)
        fs.open("/volumes/v", plain)
        fs.open("/volumes/v", dsync)
        faults.arm("journal.sync", "eio")
        assert fs.write("/volumes/v", b"a" * K4, 0, plain) == K4  # no commit: not affected
        with pytest.raises(fuse.FuseOSError) as e:
            fs.write("/volumes/v", b"b" * K4, K4, dsync)
        assert e.value.errno == errno.EIO
    finally:
        store.close(checkpoint=False)


def _fsyncs(mnt: Path) -> int:
    return int(json.loads((mnt / "stats.json").read_text())["counters"]["fsyncs"])


@pytest.mark.root
@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed (make setup)")
def test_async_o_dsync_writes_through_the_mount_each_commit(array_factory) -> None:
    """fio's libaio engine, O_DIRECT|O_DSYNC, 64 writes in flight 16 at a time: vstor commits
    for each (before this, the kernel's single FSYNC at close was the only one)."""
    arr = array_factory("dsync")
    arr.start()
    arr.create("v", "16M")
    mnt = Path(arr.mnt)
    before = _fsyncs(mnt)
    run = subprocess.run(["fio", "--name=dsync", f"--filename={mnt / 'volumes' / 'v'}", "--rw=randwrite",
                          "--bs=4k", "--size=16M", "--ioengine=libaio", "--iodepth=16", "--direct=1",
                          "--sync=dsync", "--number_ios=64", "--allow_file_create=0", "--output-format=json"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["jobs"][0]["write"]["total_ios"] == 64
    assert _fsyncs(mnt) - before >= 64, "an O_DSYNC write was acknowledged without a commit"
    arr.stop()


def test_a_write_from_libfuses_buffer_keeps_nothing_of_it(tmp_path: Path) -> None:
    """VolumeFS.write_from (DirectReadFUSE hands it a view of libfuse's buffer, which libfuse
    reuses once the callback returns): the store must have copied or sent everything it needs
    before the call returns. The buffer is overwritten after each call, as libfuse would."""
    store = Store.open(make_pool(tmp_path))
    try:
        vid = store.create_volume("v", 8 * MiB).id
        fs = VolumeFS(store)
        fi = _fi(os.O_RDWR | os.O_DSYNC)
        fs.open("/volumes/v", fi)
        buf = bytearray(MiB)
        for n, size in enumerate((K4, 64 * 1024, MiB)):
            buf[:size] = bytes([n + 1]) * size
            assert fs.write_from("/volumes/v", memoryview(buf)[:size], n * MiB, fi) == size
            buf[:] = b"\xee" * MiB  # libfuse's next request
        for n, size in enumerate((K4, 64 * 1024, MiB)):
            assert store.read(vid, n * MiB, size) == bytes([n + 1]) * size
    finally:
        store.close()
