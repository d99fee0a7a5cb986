"""Kernel counters around one benchmark pass: the block device, the CPUs and one process.

A throughput figure alone does not say where the time went. These counters do: how many
requests reached the disk and how long it was busy, how much CPU the kernel and user space
spent (and how much the hypervisor took, as steal), and how much CPU the FUSE server itself
used and how many page faults it took (a fault per MiB read means the server touched fresh
memory: on a VM with free page reporting, memory the host may have to back again). The
parsing is pure (it takes the files' text), so it is tested without a device.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECTOR = 512
# /proc/stat's cpu line: user nice system idle iowait irq softirq steal ...
_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def disk_of(path: str | Path) -> str:
    """The /sys/block name of the disk holding ``path`` (the whole disk, not a partition)."""
    dev = os.stat(path).st_dev
    sys_dev = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve()
    if (sys_dev / "partition").exists():
        sys_dev = sys_dev.parent
    if not (sys_dev / "stat").exists():
        raise OSError(f"{path} is not on a block device with statistics ({sys_dev})")
    return sys_dev.name


def parse_diskstat(text: str) -> dict[str, int]:
    """/sys/block/DEV/stat: reads completed, reads merged, sectors read, ms reading, ..., sectors
    written (the 7th field), ..., ms busy."""
    f = [int(x) for x in text.split()]
    return {"reads": f[0], "merged": f[1], "sectors": f[2], "read_ms": f[3], "sectors_written": f[6],
            "busy_ms": f[9]}


def device_written(disk: str) -> int:
    """Bytes the block device ``disk`` (a /sys/block name) has written since boot."""
    return parse_diskstat(Path(f"/sys/block/{disk}/stat").read_text())["sectors_written"] * SECTOR


def parse_cpu(text: str, hz: int) -> dict[str, float]:
    """The first line of /proc/stat, in CPU seconds."""
    head = text.splitlines()[0].split()
    if head[0] != "cpu":
        raise ValueError(f"not /proc/stat: it starts with {head[0]!r}")
    return {name: int(v) / hz for name, v in zip(_CPU_FIELDS, head[1 : 1 + len(_CPU_FIELDS)], strict=True)}


def parse_proc_faults(text: str) -> int:
    """minflt + majflt of /proc/PID/stat (all threads); the name may hold spaces."""
    f = text.rsplit(")", 1)[1].split()
    return int(f[7]) + int(f[9])


def parse_proc_times(text: str, hz: int) -> tuple[float, float]:
    """(utime, stime) of /proc/PID/stat (all threads), in seconds; the name may hold spaces."""
    f = text.rsplit(")", 1)[1].split()
    return int(f[11]) / hz, int(f[12]) / hz


def parse_proc_cpu(text: str, hz: int) -> float:
    """utime + stime of /proc/PID/stat (all threads), in seconds."""
    return sum(parse_proc_times(text, hz))


def proc_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds process ``pid`` has used so far, all its threads."""
    return parse_proc_times(Path(f"/proc/{pid}/stat").read_text(), os.sysconf("SC_CLK_TCK"))


def server_times(pid: int | None) -> tuple[float, float] | None:
    """:func:`proc_times` of a benchmark's server, or None without one (no pid) or once it is
    gone (a job that killed it)."""
    if not pid:
        return None
    try:
        return proc_times(pid)
    except OSError:
        return None


def cpu_per_request(before: tuple[float, float], after: tuple[float, float], requests: int) -> dict[str, float]:
    """User and system CPU microseconds per request between two :func:`proc_times`; the clock
    ticks are 10 ms, so a job needs some thousands of requests for a figure worth reading."""
    n = max(1, requests)
    return {"user": round((after[0] - before[0]) / n * 1e6, 1), "sys": round((after[1] - before[1]) / n * 1e6, 1)}


@dataclass
class Snapshot:
    disk: dict[str, int]
    cpu: dict[str, float]
    proc_cpu: float
    proc_faults: int = 0


class Counters:
    """Snapshots of the disk's, the CPUs' and one process's counters."""

    def __init__(self, disk: str, pid: int) -> None:
        self.disk, self.pid = disk, pid
        self.hz = os.sysconf("SC_CLK_TCK")

    def snapshot(self) -> Snapshot:
        proc = Path(f"/proc/{self.pid}/stat").read_text()
        return Snapshot(parse_diskstat(Path(f"/sys/block/{self.disk}/stat").read_text()),
                        parse_cpu(Path("/proc/stat").read_text(), self.hz),
                        parse_proc_cpu(proc, self.hz), parse_proc_faults(proc))


def delta(a: Snapshot, b: Snapshot, seconds: float, nbytes: int) -> dict[str, float]:
    """What one pass of ``nbytes`` in ``seconds`` cost between snapshots ``a`` and ``b``."""
    d = {k: b.disk[k] - a.disk[k] for k in a.disk}
    c = {k: b.cpu[k] - a.cpu[k] for k in a.cpu}
    return {
        "mb_s": nbytes / seconds / 1e6,
        "disk_mib": d["sectors"] * SECTOR / (1 << 20),
        "disk_requests": d["reads"],
        "avg_request_kib": d["sectors"] * SECTOR / 1024 / max(1, d["reads"]),
        "disk_busy": d["busy_ms"] / 1000 / seconds,  # fraction of the pass with a request in flight
        "server_cpu_s": b.proc_cpu - a.proc_cpu,
        "server_faults_per_mib": (b.proc_faults - a.proc_faults) / (nbytes / (1 << 20)),
        "sys_s": c["system"] + c["irq"] + c["softirq"],
        "user_s": c["user"] + c["nice"],
        "iowait_s": c["iowait"],
        "steal_s": c["steal"],
    }


def with_server_cpu(pid: int | None, run: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``run(*args)``'s result (a job's, with its request count in "ios"), plus "server_cpu_us":
    the :func:`cpu_per_request` of server ``pid`` over the job, when it could be read."""
    before = server_times(pid)
    r = run(*args)
    after = server_times(pid)
    if before is not None and after is not None:
        r["server_cpu_us"] = cpu_per_request(before, after, r["ios"])
    return r
