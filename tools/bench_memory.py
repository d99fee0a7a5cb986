"""Memory per TiB allocated: the chunk map measured at a real 1 TiB allocation, and the
daemon's RSS over a sequential fill through FUSE.

    .venv/bin/python -m tools.bench_memory [--fill-gib 4] [--chunk-size 512K]

Part 1 needs no disk: it maps every chunk of a 1 TiB volume (whole-chunk records, the
layout a sequential fill or compaction leaves) and measures the map with tracemalloc.
Part 2 starts a real array, writes --fill-gib GiB of random data with 1 MiB writes, and
reports VmRSS after each GiB. The record-header cache is bounded (16 MiB) and fills
during the first ~16 GiB; the map is what keeps growing with allocation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tracemalloc

from vstor.store.journal.format import make_loc
from vstor.store.maps.chunkmap import VolumeMap
from vstor.units import parse_size

VSTOR = os.path.join(os.path.dirname(sys.executable), "vstor")


def map_bytes_per_tib(chunk_size: int) -> dict:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    vm = VolumeMap(chunk_size)
    chunks = (1 << 40) // chunk_size
    for c in range(chunks):
        vm.map(c * chunk_size, (c + 1) * chunk_size, make_loc(1 + c // 4096, 64 + (c % 4096) * 1024))
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {"chunk_size": chunk_size, "chunks": chunks, "map_mib_per_tib": round(used / 2**20, 2),
            "bytes_per_chunk": round(used / chunks, 2)}


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def daemon_fill(gib: int, chunk: str) -> dict:
    base = tempfile.mkdtemp(prefix="vstor-mem-", dir="/var/tmp")
    env = dict(os.environ, VSTOR_POOL=f"{base}/pool")
    started = False
    try:
        subprocess.run([VSTOR, "pool", "init", f"{base}/pool", "--chunk-size", chunk], env=env, check=True,
                       capture_output=True)
        subprocess.run([VSTOR, "array", "start", "--mount", f"{base}/mnt"], env=env, check=True, capture_output=True)
        started = True
        subprocess.run([VSTOR, "volume", "create", "v", "--size", f"{gib + 1}G"], env=env, check=True,
                       capture_output=True)
        st = json.loads(subprocess.run([VSTOR, "array", "status", "--json"], env=env, check=True,
                                       capture_output=True, text=True).stdout)
        pid = st["pid"]
        samples = [rss_mib(pid)]
        block = os.urandom(1 << 20)
        fd = os.open(f"{base}/mnt/volumes/v", os.O_WRONLY)
        try:
            for g in range(gib):
                for i in range(1024):
                    os.pwrite(fd, block[i % 251 :] + block[: i % 251], (g * 1024 + i) << 20)
                os.fsync(fd)
                samples.append(rss_mib(pid))
        finally:
            os.close(fd)
        slope = (samples[-1] - samples[1]) / max(1, gib - 1)
        return {"fill_gib": gib, "rss_mib": [round(s, 1) for s in samples],
                "marginal_mib_per_gib_after_first": round(slope, 2)}
    finally:
        if started:
            subprocess.run([VSTOR, "array", "stop"], env=env, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fill-gib", type=int, default=4)
    p.add_argument("--chunk-size", default="512K")
    p.add_argument("--skip-daemon", action="store_true")
    a = p.parse_args()
    print("$ " + " ".join([os.path.relpath(sys.executable), *sys.orig_argv[1:]]))
    m = map_bytes_per_tib(parse_size(a.chunk_size))
    print(f"chunk map at 1 TiB allocated ({m['chunks']} chunks of {a.chunk_size}): {m['map_mib_per_tib']} MiB "
          f"({m['bytes_per_chunk']} bytes per chunk)")
    if not a.skip_daemon:
        d = daemon_fill(a.fill_gib, a.chunk_size)
        print(f"daemon RSS MiB, idle then after each GiB written: {d['rss_mib']}")
        print(f"marginal growth after the first GiB: {d['marginal_mib_per_gib_after_first']} MiB per GiB "
              "(includes the header cache filling toward its 16 MiB cap)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
