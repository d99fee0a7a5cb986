"""Write+fsync workload for crash tests; run as a separate process.

Writes version v of slot s (deterministic bytes, see ``payload``) with os.pwrite, then
fsyncs, and logs to a host file: "A s v" before the write and "K s v" after fsync
returned. It stops at the first error (the daemon was killed) or after --seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import time


def payload(seed: int, slot: int, ver: int, size: int) -> bytes:
    block = hashlib.sha256(f"{seed}:{slot}:{ver}".encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def slot_size(seed: int, slot: int, slot_bytes: int) -> int:
    return random.Random(seed * 7919 + slot).randrange(1, slot_bytes // 512) * 512 + (slot % 7) * 3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("image")
    p.add_argument("log")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--slots", type=int, default=64)
    p.add_argument("--slot-bytes", type=int, default=256 * 1024)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--fsync-every", type=int, default=1)
    a = p.parse_args()
    rnd = random.Random(a.seed)
    versions: dict[int, int] = {}
    with open(a.log, "a", buffering=1) as log:
        for line in open(a.log):  # resume versions from earlier runs of the same log
            kind, s, v = line.split()
            versions[int(s)] = max(versions.get(int(s), 0), int(v))
        fd = os.open(a.image, os.O_RDWR)
        deadline = time.monotonic() + a.seconds
        pending: list[tuple[int, int]] = []
        try:
            while time.monotonic() < deadline:
                s = rnd.randrange(a.slots)
                v = versions.get(s, 0) + 1
                versions[s] = v
                log.write(f"A {s} {v}\n")
                os.pwrite(fd, payload(a.seed, s, v, slot_size(a.seed, s, a.slot_bytes)), s * a.slot_bytes + s % 5)
                pending.append((s, v))
                if len(pending) >= a.fsync_every:
                    os.fsync(fd)
                    for ps, pv in pending:
                        log.write(f"K {ps} {pv}\n")
                    pending.clear()
        except OSError:
            pass
        finally:
            try:
                os.close(fd)
            except OSError:
                pass


if __name__ == "__main__":
    main()
