"""Small synced writes, as databases commit them, on ext4 on a vstor volume (issue 25).

    .venv/bin/python -m tools.bench_commit [--targets loop,passthrough,vstor] [--runtime 10]
                                           [--size 4G] [--json-out FILE]

For each target, one after the other: ext4 on a loop device with direct I/O (over a sparse
file: ``loop``; over tools/passthrough_fuse.py: ``passthrough``, FUSE and Python alone; over a
fresh vstor volume: ``vstor``, as ``vstor volume attach`` makes it), then:

- ``commit-1`` and ``commit-4``: fio writing 8 KiB sequentially into a 64 MiB file written
  beforehand, an fdatasync after every write (a write-ahead log's commits), one job and four
  jobs (four files), for --runtime seconds: commits a second;
- ``sqlite-wal`` and ``sqlite-delete``: Python's sqlite3 with ``synchronous=FULL`` inserting one
  200-byte row per transaction for --runtime seconds, in WAL and in rollback-journal mode:
  transactions a second.

Ratios vstor / loop and vstor / passthrough are printed for each (no target of their own: the
PostgreSQL target is tools/bench_pgbench.py's). For vstor it also prints the journal's mean
bytes appended per sync and the zeros it wrote ahead of its tail (journal/prewrite.py), from
``vstor array status``. Compare figures within one run. Needs root (loop devices, mounts, FUSE).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from tools.benchlib import options
from tools.benchlib.blockfs import KINDS, Ext4Target, finish_ext4_tool, run_ext4_tool
from tools.benchlib.procs import BenchError, run

JOBS = ("commit-1", "commit-4", "sqlite-wal", "sqlite-delete")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="loop,passthrough,vstor",
                   help="comma list of loop,passthrough,vstor, in run order (default: all three)")
    p.add_argument("--runtime", type=int, default=10, help="seconds of each job (default 10)")
    p.add_argument("--size", default="4G", help="size of each target's filesystem (default 4G)")
    options.add_common(p)
    a = p.parse_args(argv)
    a.size_bytes = options.size(p, a.size)
    a.target_list = options.choices(p, a.targets, KINDS, "target")
    if a.runtime < 1:
        p.error("--runtime must be at least 1")
    return a


def fio_commits(mnt: Path, jobs: int, runtime: int) -> float:
    """Commits a second: 8 KiB writes with an fdatasync after each, ``jobs`` files at once."""
    base = ["fio", "--directory", str(mnt), f"--name=wal{jobs}", "--size=64M", "--rw=write", "--group_reporting",
            f"--numjobs={jobs}", "--output-format=json"]
    run([*base, "--bs=1M", "--end_fsync=1"], timeout=300)  # the files' blocks, written once
    out = run([*base, "--bs=8k", "--fdatasync=1", "--time_based", f"--runtime={runtime}"], timeout=runtime + 300).stdout
    return float(parse_fio_iops(out))


def parse_fio_iops(text: str) -> float:
    """Write IOPS of fio's JSON output (one group), or BenchError."""
    try:
        return round(json.loads(text)["jobs"][0]["write"]["iops"], 1)
    except (ValueError, KeyError, IndexError) as exc:
        raise BenchError(f"fio gave no write figure: {text[:200]!r}") from exc


def sqlite_commits(mnt: Path, mode: str, runtime: int) -> float:
    """Transactions a second: one 200-byte row each, synchronous=FULL, journal_mode ``mode``."""
    db = sqlite3.connect(str(mnt / f"bench-{mode}.db"), isolation_level=None)
    try:
        db.execute(f"PRAGMA journal_mode={mode}")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
        row = os.urandom(200)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < runtime:
            db.execute("BEGIN")
            db.execute("INSERT INTO t (v) VALUES (?)", (row,))
            db.execute("COMMIT")
            n += 1
        return round(n / (time.perf_counter() - t0), 1)
    finally:
        db.close()


def measure(kind: str, a: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    res: dict[str, Any] = {"error": None, "rates": {}}
    print(f"== {kind}", flush=True)
    try:
        target = Ext4Target(kind, workdir, a.size_bytes)
        with target as mnt:
            for job in JOBS:
                if job.startswith("commit-"):
                    rate = fio_commits(mnt, int(job.split("-")[1]), a.runtime)
                else:
                    rate = sqlite_commits(mnt, job.split("-")[1].upper(), a.runtime)
                res["rates"][job] = rate
                print(f"   {job}: {rate:,.1f} a second", flush=True)
            if target.vstor is not None:
                journal = target.vstor.status()["journal"]
                res["journal"] = {k: journal.get(k) for k in ("syncs", "appended_bytes", "sync_mean_bytes",
                                                             "prepared_bytes")}
                print(f"   journal: {journal['syncs']:,} syncs, mean {journal.get('sync_mean_bytes')} bytes "
                      f"appended per sync, {(journal.get('prepared_bytes') or 0) / 1e6:,.1f} MB of zeros written "
                      f"ahead of the tail", flush=True)
    except Exception as exc:  # one target failing (cleaned up by its with) must not stop the others
        res["error"] = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
        print(f"   FAILED: {res['error']}", flush=True)
    return res


def report(results: dict[str, dict[str, Any]]) -> list[str]:
    """A table of the rates per target, then vstor's ratios to loop and passthrough."""
    lines = [f"{'target':<18}" + "".join(f"{j:>15}" for j in JOBS)]
    for kind, r in results.items():
        lines.append(f"{kind:<18}" + ("  FAILED: " + r["error"] if r["error"] else
                                      "".join(f"{r['rates'].get(j, 0):>15,.1f}" for j in JOBS)))
    for base in ("loop", "passthrough"):
        v, b = results.get("vstor", {}).get("rates"), results.get(base, {}).get("rates")
        if v and b:
            lines.append(f"{'vstor/' + base:<18}" + "".join(
                f"{v[j] / b[j]:>15.2f}" if b.get(j) and j in v else f"{'-':>15}" for j in JOBS))
    return lines


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    results, interrupted = run_ext4_tool(
        "bench_commit", a, ("losetup", "mkfs.ext4", "fio", "fusermount3"),
        f"ext4 on a loop device (direct I/O) of {a.size} per target; {a.runtime} s per job",
        lambda kind, workdir: measure(kind, a, workdir))
    print("\n".join(report(results)))
    return finish_ext4_tool(a, {"runtime": a.runtime, "size": a.size_bytes}, results, interrupted)


if __name__ == "__main__":
    sys.exit(main())
