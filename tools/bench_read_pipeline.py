"""Where a cold sequential read through FUSE spends its time: vstor against the passthrough.

    .venv/bin/python -m tools.bench_read_pipeline [--size 2G] [--rounds 6] [--segment-size 512M]
        [--readers dd,fio,fio-nohint]

Sets up the bare passthrough and a plain vstor volume (and, with --segment-size, a second
vstor pool with that journal segment size), fills each with the same random data through
its FUSE file, then reads each whole file in 1 MiB psync requests after dropping the page
cache: with ``dd bs=1M`` by default, or with fio (as bench_fio.py's seq-read job, whose
default ``fadvise_hint`` doubles the FUSE file's read-ahead), or with fio without that hint.
The passes take turns and their order rotates every round, because on a shared machine the
second of two back-to-back runs tends to be slower.

Around every pass it reads the kernel's counters (benchlib/counters.py): the requests that
reached the backing disk, how long the disk was busy, the CPU time and page faults of the FUSE
server, and the system's kernel, user, iowait and steal time. They show whether a pass waited
on the disk or on CPU (copies in the kernel, mostly), and so whether a change of the ratio
between two runs came from vstor or from the machine; faults per MiB show whether the server
touches fresh memory as it reads.

Prints one line per pass, the medians, and each round's ratio to the passthrough. MB/s is
the reader's own figure (dd's or fio's timing, without process start-up); the counters
cover the whole pass.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.benchlib.counters import Counters, delta, disk_of
from tools.benchlib.fio import parse_job
from tools.benchlib.hostmem import steady_memory
from tools.benchlib.procs import BenchError, drop_caches, install_signal_handlers, run
from tools.benchlib.targets import Passthrough, Target, Vstor
from vstor.errors import UsageError
from vstor.units import format_size, parse_size

READERS = ("dd", "fio", "fio-nohint")
COLUMNS = ("mb_s", "disk_requests", "avg_request_kib", "disk_busy", "server_cpu_s", "server_faults_per_mib",
           "sys_s", "user_s", "iowait_s", "steal_s")


def read_command(reader: str, path: Path, size: int) -> list[str]:
    """A cold sequential read of ``size`` bytes in 1 MiB psync requests. fio's default
    ``fadvise_hint=1`` gives the file POSIX_FADV_SEQUENTIAL, which doubles the kernel's
    read-ahead window of the FUSE file; dd and ``fio-nohint`` leave it as mounted."""
    if reader == "dd":
        return ["dd", f"if={path}", "of=/dev/null", "bs=1M", f"count={size >> 20}"]
    return ["fio", "--name=seq-read", f"--filename={path}", "--rw=read", "--bs=1M", "--ioengine=psync",
            "--iodepth=1", f"--size={size}", f"--fadvise_hint={0 if reader == 'fio-nohint' else 1}",
            "--output-format=json"]


def reader_seconds(reader: str, res: subprocess.CompletedProcess[str]) -> float:
    """How long the reader itself says its reads took (no process start-up), as bench_fio.py
    takes fio's own bandwidth."""
    try:
        if reader == "dd":
            return float(re.findall(r"copied, ([0-9.]+) s", res.stderr)[-1])
        return parse_job(res.stdout, res.stderr, res.returncode, "seq-read")["read"]["runtime"] / 1000
    except (ValueError, IndexError, KeyError) as e:
        raise BenchError(f"cannot read the {reader} pass's duration from its output ({e})") from None


def one_pass(path: Path, size: int, counters: Counters, reader: str) -> dict[str, float]:
    """The counters' deltas over the whole pass; ``mb_s`` by the reader's own timing."""
    drop_caches()
    a = counters.snapshot()
    t0 = time.perf_counter()
    res = run(read_command(reader, path, size), timeout=600)
    out = delta(a, counters.snapshot(), time.perf_counter() - t0, size)
    out["mb_s"] = size / reader_seconds(reader, res) / 1e6
    return out


def fill(path: Path, size: int, source: Path) -> None:
    run(["dd", f"if={source}", f"of={path}", "bs=1M", f"count={size >> 20}", "conv=fdatasync,notrunc"],
        timeout=900)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="2G", help="bytes read per pass (default 2G)")
    p.add_argument("--rounds", type=int, default=6, help="passes of every target (default 6)")
    p.add_argument("--segment-size", help="also a vstor pool with this journal segment size")
    p.add_argument("--readers", default="dd", help=f"comma list of {', '.join(READERS)} (default dd)")
    p.add_argument("--workdir", default="/var/tmp")
    p.add_argument("--keep-page-reporting", action="store_true",
                   help="leave the VM's free page reporting on (by default it is held off: benchlib/hostmem.py)")
    a = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_read_pipeline: needs root (FUSE mounts, drop_caches)")
    try:
        size = parse_size(a.size)
        if a.segment_size:
            parse_size(a.segment_size, "segment size")
    except UsageError as e:
        raise SystemExit(f"bench_read_pipeline: {e}") from None
    readers = [r for r in a.readers.split(",") if r]
    if not readers or set(readers) - set(READERS):
        raise SystemExit(f"bench_read_pipeline: --readers takes a comma list of {', '.join(READERS)}, "
                         f"not {a.readers!r}")
    if size % (1 << 20) or size <= 0 or a.rounds < 1:
        raise SystemExit(f"bench_read_pipeline: --size must be a positive number of MiB (not {a.size}) "
                         f"and --rounds at least 1 (not {a.rounds})")
    missing = [c for c in ("dd", "fusermount3", *(["fio"] if set(readers) - {"dd"} else [])) if not shutil.which(c)]
    if missing:
        raise SystemExit(f"bench_read_pipeline: missing commands: {', '.join(missing)} (make setup)")
    try:
        disk = disk_of(a.workdir)
    except OSError as e:
        raise SystemExit(f"bench_read_pipeline: --workdir {a.workdir}: {e.strerror or e}") from None
    print("$ " + " ".join([sys.executable, *sys.orig_argv[1:]]), flush=True)
    install_signal_handlers()
    work = Path(tempfile.mkdtemp(prefix="vstor-pipeline-", dir=a.workdir))
    try:
        with steady_memory(not a.keep_page_reporting) as memory:
            print(memory, flush=True)
            return measure(work, disk, size, a.rounds, a.segment_size, readers)
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'Ctrl-C'}): everything set up was undone", file=sys.stderr)
        return 130
    except BenchError as e:
        print(f"bench_read_pipeline: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(work: Path, disk: str, size: int, rounds: int, segment_size: str | None, readers: list[str]) -> int:
    targets: dict[str, Target] = {
        "passthrough": Passthrough("passthrough", work, size),
        "vstor": Vstor("vstor", work, size, "plain"),
    }
    if segment_size:
        name = f"vstor-seg{segment_size}"
        targets[name] = Vstor(name, work, size, "plain", ["--segment-size", segment_size])
    print(f"{format_size(size)} per pass, disk {disk}, read_ahead_kb "
          f"{Path(f'/sys/block/{disk}/queue/read_ahead_kb').read_text().strip()}, {os.cpu_count()} CPUs")
    source = work / "source"
    run(["dd", "if=/dev/urandom", f"of={source}", "bs=1M", f"count={size >> 20}"], timeout=900)
    with contextlib.ExitStack() as stack:
        paths = {name: stack.enter_context(t) for name, t in targets.items()}
        for path in paths.values():
            fill(path, size, source)
        source.unlink()
        passes = [(name, reader) for reader in readers for name in targets]
        results: dict[tuple[str, str], list[dict[str, float]]] = {p: [] for p in passes}
        for r in range(rounds):
            for name, reader in passes[r % len(passes):] + passes[: r % len(passes)]:
                pid = targets[name].pid
                assert pid is not None, name
                res = one_pass(paths[name], size, Counters(disk, pid), reader)
                results[name, reader].append(res)
                print(f"round {r + 1} {name + ' ' + reader:<24} " + "  ".join(f"{k}={res[k]:,.2f}" for k in COLUMNS),
                      flush=True)
    report(results)
    return 0


def report(results: dict[tuple[str, str], list[dict[str, float]]]) -> None:
    print("\nmedians")
    for (name, reader), runs in results.items():
        print(f"{name + ' ' + reader:<24} " + "  ".join(f"{k}={statistics.median(r[k] for r in runs):,.2f}"
                                                      for k in COLUMNS))
    for (name, reader), runs in results.items():
        if name == "passthrough":
            continue
        base = results["passthrough", reader]
        ratios = [v["mb_s"] / b["mb_s"] for b, v in zip(base, runs, strict=True)]
        print(f"{name}/passthrough with {reader}, MB/s per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
              f"median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    sys.exit(main())
