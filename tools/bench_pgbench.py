"""PostgreSQL's pgbench on ext4 on a vstor volume against ext4 on a plain loop device (issue 25).

    .venv/bin/python tools/bench_pgbench.py [--scale 20] [--clients 4] [--time 60] [--size 4G]
                                            [--targets loop,vstor] [--json-out FILE]

For each target, one after the other: a file-backed filesystem of --size (ext4 on a loop
device with direct I/O: over a sparse file in --workdir, or over a fresh vstor volume's FUSE
image, as ``vstor volume attach`` makes it), a private PostgreSQL cluster on it (apt's
postgresql, run as the postgres user, unix socket only), ``pgbench -i -s SCALE`` then
``pgbench -s SCALE -c CLIENTS -j CLIENTS -T TIME``; then everything is torn down. The report
gives each target's TPS and the ratio vstor / loop (target >= 0.9). Both targets share this
2-core VM with whatever else runs: compare the ratio within one run only.
Needs root (loop devices, mounts, FUSE).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from tools.benchlib import options
from tools.benchlib.blockfs import KINDS, Ext4Target, finish_ext4_tool, run_ext4_tool
from tools.benchlib.postgres import PgCluster, parse_tps, pg_bindir
from tools.benchlib.procs import BenchError

TARGET_RATIO = 0.9


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=int, default=20, help="pgbench scale factor (-s; default 20, about 300 MB)")
    p.add_argument("--clients", type=int, default=4, help="pgbench clients and threads (-c, -j; default 4)")
    p.add_argument("--time", type=int, default=60, help="seconds of the measured pgbench run (-T; default 60)")
    p.add_argument("--size", default="4G", help="size of each target's filesystem (default 4G)")
    p.add_argument("--targets", default="loop,vstor",
                   help="comma list of loop,vstor,passthrough (a loop device over tools/passthrough_fuse.py: "
                        "FUSE and Python alone), in run order (default loop,vstor)")
    options.add_common(p)
    a = p.parse_args(argv)
    a.size_bytes = options.size(p, a.size)
    a.target_list = options.choices(p, a.targets, KINDS, "target")
    for name in ("scale", "clients", "time"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1")
    return a


def measure(kind: str, a: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    res: dict[str, Any] = {"error": None}
    print(f"== {kind}", flush=True)
    try:
        with Ext4Target(kind, workdir, a.size_bytes) as mnt, PgCluster(mnt) as pg:
            t0 = time.monotonic()
            pg.pgbench("-i", "-q", "-s", str(a.scale))
            res["init_s"] = round(time.monotonic() - t0, 1)
            print(f"   pgbench -i -s {a.scale}: {res['init_s']} s", flush=True)
            os.sync()
            out = pg.pgbench("-s", str(a.scale), "-c", str(a.clients), "-j", str(a.clients), "-T", str(a.time),
                             timeout=a.time + 600)
            res.update(parse_tps(out))
            print(f"   pgbench -c {a.clients} -T {a.time}: {res['tps']:,.1f} TPS, latency "
                  f"{res.get('latency_ms')} ms", flush=True)
    except Exception as exc:  # one target failing (cleaned up by its with) must not stop the other
        res["error"] = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
        print(f"   FAILED: {res['error']}", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        bindir = pg_bindir()
    except BenchError as exc:
        raise SystemExit(f"bench_pgbench: {exc}") from None
    results, interrupted = run_ext4_tool(
        "bench_pgbench", a, ("losetup", "mkfs.ext4", "runuser", "fusermount3"),
        f"PostgreSQL from {bindir}; scale {a.scale}, {a.clients} clients, {a.time} s; "
        f"ext4 on a loop device (direct I/O) of {a.size} per target",
        lambda kind, workdir: measure(kind, a, workdir),
        prepare=lambda workdir: os.chmod(workdir, 0o755))  # the postgres user must reach the cluster inside
    for kind, r in results.items():
        print(f"{kind:<11} " + (f"FAILED: {r['error']}" if r["error"] else
                               f"{r['tps']:>10,.1f} TPS  latency {r.get('latency_ms')} ms  init {r['init_s']} s"))
    ratio = None
    if all(results.get(k, {}).get("tps") for k in ("loop", "vstor")):
        ratio = round(results["vstor"]["tps"] / results["loop"]["tps"], 3)
        print(f"vstor/loop TPS: {ratio:.2f} ({'met' if ratio >= TARGET_RATIO else 'NOT met'}, "
              f"target >= {TARGET_RATIO})")
    for a_, b_ in (("passthrough", "loop"), ("vstor", "passthrough")):
        if results.get(a_, {}).get("tps") and results.get(b_, {}).get("tps"):
            print(f"{a_}/{b_} TPS: {results[a_]['tps'] / results[b_]['tps']:.2f}")
    return finish_ext4_tool(a, {"scale": a.scale, "clients": a.clients, "time": a.time, "size": a.size_bytes,
                                "ratio": ratio}, results, interrupted)


if __name__ == "__main__":
    sys.exit(main())
