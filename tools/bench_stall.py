"""No stalls: ``stress-ng --iomix`` on ext4 on a vstor volume must end close to its --timeout (issue 25).

    .venv/bin/python tools/bench_stall.py [--workers 2] [--timeout 60] [--limit 75] [--size 4G]
                                          [--targets vstor] [--json-out FILE]

For each target (``vstor``: ext4 on a loop device over a fresh vstor volume's FUSE image;
``loop``: the same over a sparse file, for reference; ``passthrough``: over tools/passthrough_fuse.py's
image), one after the other: mount, run
``stress-ng --iomix WORKERS --timeout TIMEOUT --temp-path MNT``, and time it from start to
exit. stress-ng stops its workers at the timeout, but a worker blocked in an fsync or a
read that the storage does not answer ends only when the storage does: the time past the
timeout is how long the storage held it. Target: vstor ends within --limit (75 s).
Then the filesystem is unmounted (that writes back what is dirty) and torn down; the time of
the unmount is reported too. Needs root (loop devices, mounts, FUSE).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tools.benchlib import options
from tools.benchlib.blockfs import KINDS, Ext4Target, finish_ext4_tool, run_ext4_tool
from tools.benchlib.procs import BenchError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="stress-ng --iomix workers (default 2)")
    p.add_argument("--timeout", type=int, default=60, help="stress-ng --timeout in seconds (default 60)")
    p.add_argument("--limit", type=float, default=75.0,
                   help="seconds within which stress-ng must end on vstor (default 75)")
    p.add_argument("--size", default="4G", help="size of each target's filesystem (default 4G)")
    p.add_argument("--targets", default="vstor",
                   help="comma list of vstor,loop,passthrough, in run order (default vstor)")
    options.add_common(p)
    a = p.parse_args(argv)
    a.size_bytes = options.size(p, a.size)
    a.target_list = options.choices(p, a.targets, KINDS, "target")
    if a.workers < 1 or a.timeout < 1:
        p.error("--workers and --timeout must be at least 1")
    return a


def run_stress(mnt: Path, workers: int, timeout: int) -> tuple[float, str]:
    """Run stress-ng in mnt; returns its wall time and the tail of its output. A run that
    takes 10 times its timeout is killed (and fails the benchmark)."""
    cmd = ["stress-ng", "--iomix", str(workers), "--timeout", str(timeout), "--temp-path", str(mnt),
           "--metrics-brief"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout * 10)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"stress-ng still running after {timeout * 10} s") from exc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise BenchError(f"stress-ng failed ({proc.returncode}): {out.strip()[-500:]}")
    return elapsed, out


_BOGO = re.compile(r"metrc: \[\d+\] iomix\s+(\d+)\s")


def bogo_ops(out: str) -> int | None:
    """stress-ng's bogo ops of the iomix stressor (--metrics-brief), None if it printed none."""
    m = _BOGO.search(out)
    return int(m.group(1)) if m else None


def measure(kind: str, a: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    res: dict[str, Any] = {"error": None}
    print(f"== {kind}", flush=True)
    try:
        target = Ext4Target(kind, workdir, a.size_bytes)
        with target as mnt:
            elapsed, out = run_stress(mnt, a.workers, a.timeout)
            res["elapsed_s"] = round(elapsed, 1)
            res["bogo_ops"] = bogo_ops(out)
            res["stress_ng_tail"] = out.strip().splitlines()[-6:]
            print(f"   stress-ng --iomix {a.workers} --timeout {a.timeout}: {elapsed:.1f} s", flush=True)
            t0 = time.monotonic()
            subprocess.run(["sync", "-f", str(mnt)], check=False)
            res["sync_s"] = round(time.monotonic() - t0, 1)
            print(f"   sync after it: {res['sync_s']} s", flush=True)
            t_down = time.monotonic()
        res["teardown_s"] = round(time.monotonic() - t_down, 1)  # unmount, detach, array stop
    except Exception as exc:  # one target failing (cleaned up by its with) must not stop the other
        res["error"] = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
        print(f"   FAILED: {res['error']}", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    results, interrupted = run_ext4_tool("bench_stall", a, ("stress-ng", "losetup", "mkfs.ext4", "fusermount3"),
                                         f"ext4 on a loop device (direct I/O) of {a.size} per target",
                                         lambda kind, workdir: measure(kind, a, workdir))
    missed = False
    for kind, r in results.items():
        if r["error"]:
            print(f"{kind:<11} FAILED: {r['error']}")
            continue
        verdict = ""
        if kind == "vstor":
            ok = r["elapsed_s"] <= a.limit
            missed = not ok
            verdict = f" ({'met' if ok else 'NOT met'}, target <= {a.limit:g} s)"
        print(f"{kind:<11} stress-ng --iomix {a.workers} --timeout {a.timeout} ended after {r['elapsed_s']} s"
              f"{verdict}; {r['bogo_ops']} bogo ops; sync after it {r['sync_s']} s, teardown {r['teardown_s']} s")
    if missed and not interrupted:
        print("(a missed target is reported, not an error: the exit status says whether it ran)")
    return finish_ext4_tool(a, {"workers": a.workers, "timeout": a.timeout, "limit": a.limit, "size": a.size_bytes},
                            results, interrupted)


if __name__ == "__main__":
    sys.exit(main())
