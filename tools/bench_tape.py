"""Tape throughput: an emulated LTO-9 drive through FUSE and through the internal API, against a
bare file on the same filesystem, in one run.

    .venv/bin/python -m tools.bench_tape [--size 4G] [--quick] [--json-out FILE]

Measured, with 256 KiB blocks (GNU tar's ``-b 512``) of incompressible data:
  bare file      os.write of 256 KiB blocks to a plain file, then fdatasync (the baseline)
  api write/read TapeDrive over a Cartridge in this process (no FUSE)
  fuse write     the same writer on DIR/media/L/ndrive0 (direct_io), then close (a filemark)
  fuse read      256 KiB reads back after mt rewind
  tar write      tar -b 512 -cf ndrive0 of one file of that size, kept in /dev/shm
Target (issue 5): >= 300 MB/s through FUSE. Everything is made under a temporary directory in
/var/tmp and removed at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tools.benchlib.timing import Timer
from vstor.media.cartridge import Cartridge
from vstor.media.tapedrive import MTREW, TapeDrive
from vstor.units import parse_size

VSTOR = str(Path(sys.executable).parent / "vstor")
BLOCK = 256 * 1024


def mb_per_s(fn: Callable[[], int]) -> float:
    """MB/s (10^6 bytes/s) of fn, which returns the bytes it moved."""
    with Timer() as t:
        n = fn()
    return n / t.seconds / 1e6


def write_fd(fd: int, total: int, blocks: list[bytes], sync: bool) -> int:
    done = 0
    while done < total:
        done += os.write(fd, blocks[(done // BLOCK) % len(blocks)])
    if sync:
        os.fdatasync(fd)
    return done


def read_fd(fd: int, total: int) -> int:
    done = 0
    while done < total:
        n = len(os.read(fd, BLOCK))
        if not n:
            break
        done += n
    return done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="4G")
    ap.add_argument("--quick", action="store_true", help="1 GiB")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    total = parse_size("1G" if a.quick else a.size)
    blocks = [os.urandom(BLOCK) for _ in range(16)]
    work = Path(tempfile.mkdtemp(prefix="bench-tape-", dir="/var/tmp"))
    env = dict(os.environ, VSTOR_POOL=str(work / "pool"))
    res: dict[str, float] = {}
    started = False
    try:
        fd = os.open(work / "bare", os.O_WRONLY | os.O_CREAT)
        res["bare write"] = mb_per_s(lambda: write_fd(fd, total, blocks, True))
        os.close(fd)
        os.unlink(work / "bare")

        cart = Cartridge(str(work / "api.tape"), "API001L9", 2 * total)
        drv = TapeDrive(cart, 0x60, True, False, 1 << 20)
        res["api write"] = mb_per_s(lambda: sum(drv.write(blocks[i % 16]) for i in range(total // BLOCK)))
        drv.op(MTREW, 1)
        res["api read"] = mb_per_s(lambda: sum(len(drv.read(BLOCK)) for _ in range(total // BLOCK)))
        cart.close()
        os.unlink(work / "api.tape")

        def v(*args: str) -> None:
            subprocess.run([VSTOR, *args], env=env, check=True, capture_output=True)

        v("pool", "init", str(work / "pool"))
        v("array", "start", "--mount", str(work / "mnt"))
        started = True
        v("library", "create", "L", "--type", "tape", "--slots", "4", "--drives", "1")
        v("media", "create", "L", "VT0001L9", "--capacity", str(3 * total))
        v("media", "load", "L", "VT0001L9", "--drive", "0")
        dev = str(work / "mnt" / "media" / "L" / "ndrive0")

        def fuse_write() -> int:
            fd = os.open(dev, os.O_WRONLY)
            try:
                return write_fd(fd, total, blocks, False)
            finally:
                os.close(fd)  # writes the filemark and flushes

        res["fuse write"] = mb_per_s(fuse_write)
        subprocess.run(["mt", "-f", dev, "rewind"], check=True)

        def fuse_read() -> int:
            fd = os.open(dev, os.O_RDONLY)
            try:
                return read_fd(fd, total)
            finally:
                os.close(fd)

        res["fuse read"] = mb_per_s(fuse_read)
        shm = Path(tempfile.mkdtemp(prefix="bench-tape-src-", dir="/dev/shm"))  # tar's reads stay off the disk
        try:
            with open(shm / "data", "wb") as f:
                write_fd(f.fileno(), total, blocks, False)
            subprocess.run(["mt", "-f", dev, "eod"], check=True)

            def tar_write() -> int:
                subprocess.run(["tar", "-b", "512", "-cf", dev, "-C", str(shm), "data"], check=True)
                return total

            res["tar write"] = mb_per_s(tar_write)
        finally:
            shutil.rmtree(shm, ignore_errors=True)
    finally:
        if started:
            subprocess.run([VSTOR, "array", "stop"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    base = res["bare write"]
    print(f"tape throughput, {total >> 20} MiB in 256 KiB blocks (MB/s; ratio to the bare file write)")
    for k, mbs in res.items():
        note = "  (target >= 300 MB/s)" if k.startswith("fuse w") else ""
        print(f"  {k:<11} {mbs:8.0f} MB/s  {mbs / base:5.2f}x{note}")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"bytes": total, "mb_per_s": res}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
