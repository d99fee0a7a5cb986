"""The sustained mixed load of issue 25: fio 70/30 random read/write with an fsync every 32 writes.

One job per block size (4 KiB and 64 KiB), time-based (120 s unless --runtime says otherwise),
on a file the sequential write laid out first. Besides IOPS and p99 latencies, fio logs the
completions of every second (``--write_iops_log`` averaged over ``--log_avg_msec=1000``), and
a second with no completion at all is a stall. Write amplification is what the server wrote
to its disk (``/proc/PID/io``) and, for vstor, what its journal appended, over the bytes fio
wrote. The parsing is pure (it takes the log files' text), so it is tested without fio.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

from .fio import FioSettings, Job
from .procs import BenchError

__all__ = ["MIXED_JOBS", "MIXED_RUNTIME", "RWMIXREAD", "FSYNC_EVERY", "mixed_args", "parse_iops_log",
           "stall_seconds", "run_mixed", "proc_io", "write_amplification"]

MIXED_RUNTIME = 120  # seconds of each mixed job unless --runtime is given
RWMIXREAD = 70  # percent of requests that are reads
FSYNC_EVERY = 32  # fio --fsync: an fsync after this many writes
LOG_MSEC = 1000  # one iops sample per second

# Before them, the phase's seq-write lays the whole file out (benchlib.fio.JOBS[0]).
MIXED_JOBS = (
    Job("mixed-4k", "randrw", "4k", "IOPS", drop_caches_before=False, time_based=True),
    Job("mixed-64k", "randrw", "64k", "IOPS", drop_caches_before=False, time_based=True),
)


def mixed_args(settings: FioSettings, job: Job, path: Path, log_prefix: Path) -> list[str]:
    """fio's command line: the settings' common options, then the mix, the fsyncs and the log."""
    return [
        *settings.args(job, path),
        f"--rwmixread={RWMIXREAD}", f"--fsync={FSYNC_EVERY}",
        f"--write_iops_log={log_prefix}", f"--log_avg_msec={LOG_MSEC}",
    ]


def parse_iops_log(text: str) -> dict[int, float]:
    """fio's iops log ("msec, value, direction, bs, offset[, prio]" per line), averaged per window:
    completions of reads and writes added up per window, keyed by the window's end in ms."""
    out: dict[int, float] = {}
    for line in text.splitlines():
        f = [x.strip() for x in line.split(",")]
        if len(f) < 3 or not f[0].isdigit():
            continue
        ms, value = int(f[0]), float(f[1])
        if f[2] in ("0", "1"):  # 2 is trim, not part of this job
            out[ms] = out.get(ms, 0.0) + value
    return out


def stall_seconds(samples: dict[int, float], runtime_s: int, window_ms: int = LOG_MSEC) -> list[int]:
    """The seconds (1-based) of the run that saw no completion: a window logged with 0, or no
    window logged at all for that second (fio skips none while it runs, but a hung process logs
    nothing). The last partial second is not counted."""
    per_second: dict[int, float] = {}
    for ms, v in samples.items():
        sec = max(1, round(ms / window_ms))
        per_second[sec] = per_second.get(sec, 0.0) + v
    return [s for s in range(1, runtime_s) if per_second.get(s, 0.0) == 0.0]


def proc_io(pid: int) -> dict[str, int]:
    """/proc/PID/io as numbers (all threads of the process)."""
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k.strip()] = int(v)
    return out


def write_amplification(disk_bytes: int, host_bytes: int) -> float | None:
    return round(disk_bytes / host_bytes, 3) if host_bytes > 0 else None


def _percentile_us(d: dict[str, Any], key: str = "clat_ns") -> float:
    return round(d.get(key, {}).get("percentile", {}).get("99.000000", 0) / 1000, 1)


def run_mixed(settings: FioSettings, job: Job, path: Path, logdir: Path) -> dict[str, Any]:
    """Run one mixed job; returns total IOPS as the value, per-direction figures, p99s and stalls."""
    prefix = logdir / job.name
    cmd = mixed_args(settings, job, path, prefix)
    runtime = job.runtime or settings.runtime
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=runtime + 300)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"fio {job.name}: no result after {runtime + 300}s") from exc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    try:
        fj = json.loads(stdout[stdout.index("{"):])["jobs"][0]
    except (ValueError, KeyError, IndexError) as exc:
        raise BenchError(f"fio {job.name} failed ({proc.returncode}): {stderr.strip()[-500:]}") from exc
    if proc.returncode != 0 or fj.get("error"):
        raise BenchError(f"fio {job.name}: exit {proc.returncode}, job error {fj.get('error')}: "
                         f"{stderr.strip()[-500:]}")
    rd, wr, sync = fj["read"], fj["write"], fj.get("sync", {})
    samples: dict[int, float] = {}
    for log in sorted(logdir.glob(f"{job.name}_iops*.log")):
        for ms, v in parse_iops_log(log.read_text()).items():
            samples[ms] = samples.get(ms, 0.0) + v
    stalls = stall_seconds(samples, runtime)
    return {
        "value": round(rd["iops"] + wr["iops"]),
        "metric": job.metric,
        "read_iops": round(rd["iops"]),
        "write_iops": round(wr["iops"]),
        "bytes": wr["io_bytes"],  # what the host wrote: the write amplification's denominator
        "read_bytes": rd["io_bytes"],
        "ios": rd["total_ios"] + wr["total_ios"],
        "runtime_s": max(rd["runtime"], wr["runtime"]) / 1000,
        "lat_mean_us": round((rd["lat_ns"]["mean"] * rd["total_ios"] + wr["lat_ns"]["mean"] * wr["total_ios"])
                             / max(1, rd["total_ios"] + wr["total_ios"]) / 1000, 1),
        "clat_p99_us": max(_percentile_us(rd), _percentile_us(wr)),
        "read_p99_us": _percentile_us(rd),
        "write_p99_us": _percentile_us(wr),
        "fsync_p99_us": _percentile_us(sync, "lat_ns"),
        "fsyncs": sync.get("total_ios", 0),
        "seconds_logged": len({max(1, round(ms / LOG_MSEC)) for ms in samples}),
        "min_second_iops": round(min(samples.values())) if samples else None,
        "stall_seconds": stalls,
        "command": cmd,
    }


def mixed_report(results: dict[str, dict[str, Any]], rat: dict[str, dict[str, float | None]],
                 jobs: tuple[Job, ...]) -> str:
    """Per target and mixed job: the split, p99s, stalls and write amplification; then vstor
    against the passthrough on the issue's targets (IOPS >= 0.8, p99 <= 3x, no stall, WA < 1.5)."""
    lines = ["MIXED LOAD (70/30 randrw, fsync every 32 writes; p99 in us; WA = bytes written / bytes fio wrote: "
             "by the disk, dirtied by the server (/proc/PID/io), appended by vstor's journal)"]
    mixed = [j for j in jobs if j in MIXED_JOBS]
    for name, r in results.items():
        for job in mixed:
            m = r.get("jobs", {}).get(job.name)
            if not m:
                continue
            wa = (f"WA device {m.get('wa_device')}, dirtied {m.get('wa_disk')}"
                  + (f", journal {m['wa_journal']}" if "wa_journal" in m else ""))
            if m.get("maintenance_bytes"):
                mb = {k: v / 1e6 for k, v in m["maintenance_bytes"].items()}
                wa += (f" (GC moves {mb['relocated_bytes'] - mb['compacted_bytes']:,.1f} MB, compactions "
                       f"{mb['compacted_bytes']:,.1f} MB, of them defragmentation {mb['defrag_bytes']:,.1f} MB)")
            if "prepared_bytes" in m:
                wa += f"; zeros written ahead of the journal tail {m['prepared_bytes'] / 1e6:,.1f} MB"
            lines.append(f"{name} {job.name}: read {m['read_iops']:,} + write {m['write_iops']:,} IOPS; p99 read "
                         f"{m['read_p99_us']}, write {m['write_p99_us']}, fsync {m['fsync_p99_us']}; "
                         f"slowest second {m['min_second_iops']} IOPS, seconds without a completion: "
                         f"{len(m['stall_seconds'])} {m['stall_seconds'][:10]}; {wa}")
    for name, r in results.items():
        base = results.get("passthrough", {}).get("jobs", {})
        if r.get("kind") != "vstor" or not base:
            continue
        for job in mixed:
            m, b = r.get("jobs", {}).get(job.name), base.get(job.name)
            if not m or not b:
                continue
            iops = rat.get(f"{name}/passthrough", {}).get(job.name)
            p99 = round(m["clat_p99_us"] / b["clat_p99_us"], 2) if b["clat_p99_us"] else None
            verdict = [
                f"IOPS {iops} ({'met' if iops is not None and iops >= 0.8 else 'NOT met'}, >= 0.8)",
                f"p99 {p99}x ({'met' if p99 is not None and p99 <= 3 else 'NOT met'}, <= 3x)",
                f"stalls {len(m['stall_seconds'])} ({'met' if not m['stall_seconds'] else 'NOT met'}, none)",
                f"WA journal {m.get('wa_journal')} "
                f"({'met' if (m.get('wa_journal') or 99) < 1.5 else 'NOT met'}, < 1.5)",
            ]
            lines.append(f"{name}/passthrough {job.name}: " + "; ".join(verdict))
    return "\n".join(lines)
