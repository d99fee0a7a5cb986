"""Host write throughput of a paired volume against an unpaired one, with each site pinned to
its own core, as if the two arrays ran on separate machines.

    .venv/bin/python -m tools.bench_pair_pinned [--rounds 2] [--size 1024]

Site A's daemon and the writer (dd bs=1M oflag=direct, SIZE MiB of random data) run on core 0,
site B's daemon on core 1 (taskset -a). "unpaired": group g is not paired; "paired": g is
replicated A -> B. Prints MB/s per round and the ratio of the medians. Needs 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.replkit import make_sites, teardown
from tools.benchlib.stdoutguard import stdout_checked


def one(mode: str, size: int, src: str) -> float:
    made: list = []
    base = Path(tempfile.mkdtemp(prefix="bench-pinned-", dir="/var/tmp"))
    try:
        s = make_sites(base, made)
        s.a.create("v", f"{size + 64}M")
        s.a.vstor("group", "create", "g", "--volumes", "v")
        if mode == "paired":
            s.pair("g", extra=("--journal-limit", "8G", "--suspend-after", "300"))
        subprocess.run(["taskset", "-a", "-p", "-c", "1", str(s.b.pid())], check=True, capture_output=True)
        subprocess.run(["taskset", "-a", "-p", "-c", "0", str(s.a.pid())], check=True, capture_output=True)
        t0 = time.perf_counter()
        subprocess.run(["taskset", "-c", "0", "dd", f"if={src}", f"of={s.a.image('v')}", "bs=1M", "oflag=direct",
                        "status=none"], check=True)
        return size / (time.perf_counter() - t0)
    finally:
        teardown(made)
        subprocess.run(["rm", "-rf", str(base)])


@stdout_checked  # prints after each teardown, which runs vstor in process in threads
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--size", type=int, default=1024, help="MiB written per round")
    a = ap.parse_args()
    src = tempfile.mktemp(prefix="bench-pinned-src-", dir="/var/tmp")
    subprocess.run(["dd", "if=/dev/urandom", f"of={src}", "bs=1M", f"count={a.size}", "status=none"], check=True)
    try:
        res: dict[str, list[float]] = {"unpaired": [], "paired": []}
        for _ in range(a.rounds):
            for mode in res:
                res[mode].append(one(mode, a.size, src))
                print(f"{mode:<9} {res[mode][-1]:6.0f} MB/s", flush=True)
    finally:
        os.unlink(src)
    un, pa = statistics.median(res["unpaired"]), statistics.median(res["paired"])
    print(f"median: unpaired {un:.0f} MB/s, paired {pa:.0f} MB/s, ratio {pa / un:.2f} (target >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
