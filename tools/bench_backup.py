"""Backup and restore throughput: vstor's backup engine against GNU tar on the same data and
the same emulated LTO-9 drive, in one run.

    .venv/bin/python -m tools.bench_backup [--size 4G] [--json-out FILE]

A group of two volumes of SIZE/2 each, filled with incompressible data, on a running array:
  tar write      tar -b 512 -cSf DIR/media/lib/ndrive0 of the two volume images (the baseline)
  tar read       tar -b 512 -xSf of that archive into a scratch directory
  backup full    vstor backup run --wait (snapshot, write, no verify), bytes / seconds
  restore full   vstor backup restore of that job to new volumes
  incremental    after 1% of the group is rewritten (64 KiB random writes): the job's bytes
                 against the changed bytes, and its time against the full's
  restore chain  the full + incremental chain to new volumes
Targets (issue 23): backup full >= 0.9 of tar write; incremental bytes <= 2x the changed bytes
and its time < 10% of the full's. Everything is made under a temporary directory in /var/tmp
and removed at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.benchlib.timing import timed
from vstor.units import format_size, parse_size

VSTOR = str(Path(sys.executable).parent / "vstor")
MiB = 1 << 20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="4G", help="the group's total size (default 4G)")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    total = parse_size(a.size)
    work = Path(tempfile.mkdtemp(prefix="vstor-bench-backup-", dir="/var/tmp"))
    env = dict(os.environ, VSTOR_POOL=str(work / "pool"))
    mnt = work / "mnt"
    started = False

    def v(*args: str) -> str:
        return subprocess.run([VSTOR, *args], env=env, check=True, capture_output=True, text=True).stdout

    def run_timed(*cmd: str) -> float:
        return timed(subprocess.run, cmd, env=env, check=True, capture_output=True)

    res: dict = {"size": total}
    try:
        v("pool", "init", str(work / "pool"))
        v("array", "start", "--mount", str(mnt))
        started = True
        half = total // 2
        for name in ("a", "b"):
            v("volume", "create", name, "--size", str(half))
            with open(mnt / "volumes" / name, "r+b") as f:
                block = os.urandom(4 * MiB)
                for off in range(0, half, 4 * MiB):
                    f.write(block[: min(4 * MiB, half - off)] if off % (16 * MiB) else os.urandom(4 * MiB))
                os.fsync(f.fileno())
        v("group", "create", "g", "--volumes", "a,b")
        v("library", "create", "lib", "--type", "tape", "--slots", "6", "--drives", "1")
        v("media", "create", "lib", "--range", "VT0001L9-VT0004L9", "--capacity", str(2 * total + 256 * MiB))
        tape = mnt / "media" / "lib" / "ndrive0"

        # The baseline: GNU tar writes and reads the same images on the same drive.
        v("media", "load", "lib", "VT0004L9", "--drive", "0")
        secs = run_timed("tar", "-b", "512", "-cSf", str(tape), "-C", str(mnt / "volumes"), "a", "b")
        res["tar_write_mb_s"] = total / secs / 1e6
        out = work / "tar-out"
        out.mkdir()
        subprocess.run(["mt", "-f", str(tape), "rewind"], check=True)
        secs = run_timed("tar", "-b", "512", "-xSf", str(tape), "-C", str(out))
        res["tar_read_mb_s"] = total / secs / 1e6
        shutil.rmtree(out)
        v("media", "unload", "lib", "--drive", "0")

        v("backup", "policy", "create", "p", "--source", "g", "--library", "lib", "--media", "VT0001L9-VT0003L9",
          "--level", "incremental", "--no-verify")
        t0 = time.perf_counter()
        full = json.loads(v("backup", "run", "p", "--wait", "--json"))
        res["full_s"] = time.perf_counter() - t0
        res["full_mb_s"] = total / res["full_s"] / 1e6
        t0 = time.perf_counter()
        v("backup", "restore", str(full["id"]), "--to", "rf")
        res["restore_full_mb_s"] = total / (time.perf_counter() - t0) / 1e6

        rng = random.Random(1)
        changed = 0
        for name in ("a", "b"):
            with open(mnt / "volumes" / name, "r+b") as f:
                for _ in range(int(half * 0.01) // (64 * 1024)):
                    f.seek(rng.randrange(0, half - 64 * 1024, 4096))
                    f.write(os.urandom(64 * 1024))
                    changed += 64 * 1024
                os.fsync(f.fileno())
        t0 = time.perf_counter()
        inc = json.loads(v("backup", "run", "p", "--wait", "--json"))
        res["incremental_s"] = time.perf_counter() - t0
        res["changed_bytes"], res["incremental_bytes"] = changed, inc["bytes"]
        t0 = time.perf_counter()
        v("backup", "restore", str(inc["id"]), "--to", "rc")
        res["restore_chain_s"] = time.perf_counter() - t0
    finally:
        if started:
            subprocess.run([VSTOR, "array", "stop"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    res["full_vs_tar"] = res["full_mb_s"] / res["tar_write_mb_s"]
    res["restore_vs_tar"] = res["restore_full_mb_s"] / res["tar_read_mb_s"]
    res["incremental_bytes_vs_changed"] = res["incremental_bytes"] / res["changed_bytes"]
    res["incremental_time_vs_full"] = res["incremental_s"] / res["full_s"]
    print(f"group of two volumes, {format_size(total)} of incompressible data, one LTO-9 drive (timing off)")
    print(f"  tar -b 512 write     {res['tar_write_mb_s']:7.1f} MB/s")
    print(f"  backup full          {res['full_mb_s']:7.1f} MB/s   ratio {res['full_vs_tar']:.2f} (target >= 0.9)")
    print(f"  tar -b 512 read      {res['tar_read_mb_s']:7.1f} MB/s")
    print(f"  restore full         {res['restore_full_mb_s']:7.1f} MB/s   ratio {res['restore_vs_tar']:.2f}")
    print(f"  incremental, 1% changed: {format_size(res['incremental_bytes'])} for {format_size(changed)} changed "
          f"({res['incremental_bytes_vs_changed']:.2f}x, target <= 2), {res['incremental_s']:.2f} s = "
          f"{res['incremental_time_vs_full']:.1%} of the full (target < 10%)")
    print(f"  restore full + incremental chain: {res['restore_chain_s']:.1f} s")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
