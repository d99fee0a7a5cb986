"""Optical libraries through the FUSE mount: sessions at the NWA, finalize, erase, two-sided MO.
Every test runs on a local pool and on a RADOS pool (tests/poolsite.py: there the disc images
and their states are in the cluster, not in the state directory)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
from pathlib import Path

import pytest
from harness import one_error_line, read_direct

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("pool_backend")]


def _write(path: str, data: bytes, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _sides(array, barcode: str) -> list[dict]:
    return json.loads(array.vstor("media", "show", "jb", barcode, "--json").stdout)["sides"]


def test_write_once_sessions_iso_and_finalize(array, tmp_path: Path, pool_backend: str):
    array.vstor("library", "create", "jb", "--type", "optical", "--slots", "4", "--drives", "1", "--mailslots", "1")
    array.vstor("media", "create", "jb", "DISC01", "--type", "BD-R", "--capacity", "64M")
    array.vstor("media", "load", "jb", "DISC01", "--drive", "0")
    dev = os.path.join(array.mnt, "media", "jb", "drive0")
    assert os.path.getsize(dev) == 64 << 20
    for d, name in (("s1", "one.txt"), ("s2", "two.txt")):
        (tmp_path / d).mkdir()
        (tmp_path / d / name).write_text(f"{name} contents\n")
    subprocess.run(["genisoimage", "-quiet", "-R", "-o", str(tmp_path / "s1.iso"), str(tmp_path / "s1")], check=True)
    _write(dev, (tmp_path / "s1.iso").read_bytes(), 0)
    (side,) = _sides(array, "DISC01")
    nwa = side["next_writable_address"]
    on_host = sorted(os.path.basename(p) for p in glob.glob(os.path.join(array.pool, "media", "jb", "DISC01.*")))
    assert on_host == (["DISC01.side0.img", "DISC01.side0.json"] if pool_backend == "local" else [])
    assert side["state"] == "appendable" and side["sessions"] == [[0, nwa]] and nwa > 0
    r = subprocess.run(["dd", "if=/dev/zero", f"of={dev}", "bs=2048", "count=1", "conv=notrunc"], capture_output=True)
    assert r.returncode != 0, "a write-once disc must refuse an overwrite"
    subprocess.run(["genisoimage", "-quiet", "-R", "-C", f"0,{nwa // 2048}", "-M", dev, "-o", str(tmp_path / "s2.iso"),
                    str(tmp_path / "s2")], check=True)
    _write(dev, (tmp_path / "s2.iso").read_bytes(), nwa)
    (side,) = _sides(array, "DISC01")
    assert len(side["sessions"]) == 2
    listing = subprocess.run(["isoinfo", "-i", dev, "-T", str(nwa // 2048), "-R", "-l"], capture_output=True,
                             text=True, check=True).stdout
    assert "one.txt" in listing and "two.txt" in listing  # the second session's tree holds both
    got = subprocess.run(["isoinfo", "-i", dev, "-T", str(nwa // 2048), "-R", "-x", "/one.txt"], capture_output=True,
                         check=True).stdout
    assert got == b"one.txt contents\n"
    array.vstor("media", "finalize", "jb", "--drive", "0")
    with pytest.raises(OSError):
        _write(dev, b"x" * 2048, side["next_writable_address"])
    array.stop()
    array.start()  # the disc's state and sessions survive a restart
    (side,) = _sides(array, "DISC01")
    assert side["state"] == "finalized" and len(side["sessions"]) == 2
    line = one_error_line(array.vstor("media", "erase", "jb", "--drive", "0", check=False), "erase write-once")
    assert "write-once" in line


def test_rewritable_erase_and_two_sided_mo(array):
    array.vstor("library", "create", "jb", "--type", "optical", "--slots", "4", "--drives", "1")
    array.vstor("media", "create", "jb", "MO0001", "--type", "MO", "--capacity", "16M")
    array.vstor("media", "create", "jb", "RE0001", "--type", "BD-RE", "--capacity", "16M")
    dev = os.path.join(array.mnt, "media", "jb", "drive0")
    array.vstor("media", "load", "jb", "MO0001", "--drive", "0")
    _write(dev, b"side A".ljust(4096, b"a"), 8192)  # random access on rewritable media
    array.vstor("media", "move", "jb", "drive0", "slot1", "--flip")
    array.vstor("media", "load", "jb", "MO0001", "--drive", "0")
    assert read_direct(dev, 8192, 4096) == bytes(4096)  # side B is blank
    _write(dev, b"side B".ljust(4096, b"b"), 0)
    sides = _sides(array, "MO0001")
    assert [s["state"] for s in sides] == ["written", "written"]
    array.vstor("media", "move", "jb", "drive0", "slot1", "--flip")
    array.vstor("media", "load", "jb", "MO0001", "--drive", "0")
    assert read_direct(dev, 8192, 6) == b"side A"
    array.vstor("media", "erase", "jb", "--drive", "0")
    assert read_direct(dev, 8192, 4096) == bytes(4096)
    assert [s["state"] for s in _sides(array, "MO0001")] == ["blank", "written"]
    array.vstor("media", "unload", "jb", "--drive", "0")
    line = one_error_line(array.vstor("media", "move", "jb", "slot2", "slot3", "--flip", check=False), "flip BD-RE")
    assert "one side" in line
    one_error_line(array.vstor("media", "create", "jb", "X1", check=False), "optical media without --type")
    one_error_line(array.vstor("media", "create", "jb", "X1", "--type", "LP", check=False), "unknown disc type")


def test_reopening_a_drive_at_once_never_sees_its_own_last_handle(array):
    # FUSE delivers RELEASE after close() returns; a close-then-open (mt, then tar) must not get EBUSY.
    array.vstor("library", "create", "jb", "--type", "optical", "--slots", "2", "--drives", "1")
    array.vstor("media", "create", "jb", "RE0002", "--type", "BD-RE", "--capacity", "16M")
    array.vstor("media", "load", "jb", "RE0002", "--drive", "0")
    dev = os.path.join(array.mnt, "media", "jb", "drive0")
    for i in range(200):
        _write(dev, i.to_bytes(4, "little") * 1024, 0)
    assert read_direct(dev, 0, 4096) == (199).to_bytes(4, "little") * 1024
