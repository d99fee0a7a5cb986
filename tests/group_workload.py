"""Cross-volume workload for the consistency-group tests; run as a separate process.

Record i goes to slot i % SLOTS of volume A; once that write has returned (the array
acknowledged it), a record referring to i goes to the same slot of volume B. So a B record
can exist only after its A record, and an image set cut in the group's write order never
shows B's record without A's. After each B write the last acknowledged index is stored in
the 8-byte progress file, so the test knows what a snapshot taken after that must hold.
SIGTERM ends the run after the current record pair, with the progress file up to date.
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import signal
import struct
import time

BLOCK = 4096
HEAD = struct.Struct("<8sQ")


def record(tag: bytes, i: int) -> bytes:
    body = hashlib.sha256(tag + i.to_bytes(8, "little")).digest() * ((BLOCK - HEAD.size) // 32 + 1)
    return (HEAD.pack(tag, i) + body)[:BLOCK]


def parse(tag: bytes, block: bytes) -> int:
    """The index in a block, 0 for a never-written block; anything else is corruption."""
    if block == bytes(BLOCK):
        return 0
    got_tag, i = HEAD.unpack_from(block)
    if got_tag != tag or block != record(tag, i):
        raise AssertionError(f"corrupt {tag!r} block (tag {got_tag!r}, index {i})")
    return i


def check_images(a: bytes, b: bytes, slots: int, what: str) -> int:
    """The invariant on one cut of the two images: B never holds a record whose A record is
    missing. Returns the newest record B holds."""
    newest = 0
    for k in range(slots):
        ia = parse(b"VSTGRP-A", a[k * BLOCK : (k + 1) * BLOCK])
        ib = parse(b"VSTGRP-B", b[k * BLOCK : (k + 1) * BLOCK])
        # A slot's A record is B's, or the next one for that slot (A written, B not yet).
        assert ia in (ib, ib + slots) or (ib == 0 and ia == k), f"{what} slot {k}: B holds record {ib} but A {ia}"
        newest = max(newest, ib)
    return newest


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("progress")
    p.add_argument("--slots", type=int, required=True)
    p.add_argument("--seconds", type=float, default=10)
    args = p.parse_args()
    fa, fb = os.open(args.a, os.O_RDWR), os.open(args.b, os.O_RDWR)
    pfd = os.open(args.progress, os.O_RDWR)
    progress = mmap.mmap(pfd, 8)
    i = struct.unpack("<Q", progress[:8])[0]  # resume after a crash
    deadline = time.monotonic() + args.seconds
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop.append(signum))
    try:
        while not stop and time.monotonic() < deadline:
            i += 1
            slot = (i % args.slots) * BLOCK
            os.pwrite(fa, record(b"VSTGRP-A", i), slot)
            os.pwrite(fb, record(b"VSTGRP-B", i), slot)
            progress[:8] = struct.pack("<Q", i)
    except OSError:
        pass  # the daemon was killed


if __name__ == "__main__":
    main()
