"""bench_snapshots' settings and small helpers: constants and targets, number formats, the
Stalled error, children that must end (or be parked until the daemon dies), py-spy dumps."""

from __future__ import annotations

import contextlib
import shlex
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from tools.benchlib.procs import BenchError, run, warn

MIB, GIB, TIB = 1 << 20, 1 << 30, 1 << 40
LEAF_SPAN = 512 * MIB  # 1024 slots of 512 KiB chunks: one map leaf
GROUP = "G"
PERCENTILES = "50:99:99.9:100"
PAUSE_TARGET_US = 10_000  # issue target: snapshot pause p99 < 10 ms
RATIO_TARGET = 0.10  # I/O within 10% of the 0-snapshot figure
LIST_TARGET_S = 1.0  # snapshot list with 1000 snapshots under 1 s


# -- small helpers ------------------------------------------------------------------------------
def ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:,.2f}"


def num(v: float | None, fmt: str = ",.0f") -> str:
    return "-" if v is None else format(v, fmt)


def summary_us(seconds: list[float]) -> dict[str, Any]:
    """median, p99 and max of durations given in seconds, in microseconds."""
    if not seconds:
        return {"count": 0, "median_us": None, "p99_us": None, "max_us": None}
    s = sorted(seconds)
    return {"count": len(s), "median_us": round(statistics.median(s) * 1e6),
            "p99_us": round(s[min(len(s) - 1, len(s) * 99 // 100)] * 1e6), "max_us": round(s[-1] * 1e6)}


def say(msg: str) -> None:
    print(msg, flush=True)


# -- fio ----------------------------------------------------------------------------------------
class Stalled(BenchError):
    """The daemon did not answer within the stall timeout."""


# Children that would not die: a process waiting for a FUSE request the daemon has already taken
# cannot end (not even by SIGKILL) until the daemon answers or dies. Reaped after the daemon is killed.
ORPHANS: list[subprocess.Popen[Any]] = []


def finish(proc: subprocess.Popen[Any], grace: float = 10) -> None:
    """Make sure proc has ended: SIGINT, then SIGKILL; if it is stuck in a FUSE request, park it in ORPHANS."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGINT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            pass
    ORPHANS.append(proc)


def reap_orphans(timeout: float = 15) -> None:
    while ORPHANS:
        proc = ORPHANS.pop()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            args = proc.args if isinstance(proc.args, list | tuple) else [proc.args]
            warn(f"pid {proc.pid} ({shlex.join(map(str, args))[:80]}) still stuck")


def read_bounded(path: Path, timeout: float) -> str:
    """A file of the FUSE mount, read by a child (cat): a stalled daemon cannot block us."""
    proc = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise Stalled(f"reading {path}: no answer after {timeout:.0f} s") from exc
    finally:
        finish(proc, grace=2)
    if proc.returncode:
        raise BenchError(f"cat {path}: {err.strip()}")
    return out


def daemon_stack(pid: int | None) -> str:
    """py-spy dump of the daemon (what it is busy with), or '' if py-spy is not there."""
    spy = Path(sys.executable).parent / "py-spy"
    if pid is None or not spy.exists():
        return ""
    try:
        return run([str(spy), "dump", "--pid", str(pid)], timeout=60, check=False).stdout
    except BenchError:
        return ""


def busy_threads(dump: str, frames: int = 4) -> list[str]:
    """The active threads of a py-spy dump, each as its innermost frames: 'name: f1 < f2 < ...'."""
    out: list[str] = []
    current: list[str] | None = None
    for line in dump.splitlines():
        if line.startswith("Thread "):
            current = None
            if "(active" in line:
                current = [line.split('"')[1] if '"' in line else line.split()[1]]
                out.append("")
        elif current is not None and line.startswith("    ") and len(current) <= frames:
            current.append(line.strip())
            out[-1] = f"{current[0]}: " + " < ".join(current[1:])
    return [x for x in out if x]
