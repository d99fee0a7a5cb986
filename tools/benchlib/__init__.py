"""Helpers shared by the benchmarks in tools/: fio jobs, the one fio runner and fio-JSON parser (fio),
the one table printer and bench_fio's report (report), the one timer (timing), processes, mounts and
cleanup (procs), the targets bench_fio compares (targets) and bench_nbd's servers (nbdservers),
kernel counters around a pass (counters), the hold on the VM's free page reporting (hostmem), how its idle
vCPUs wait (vcpu),
bench_rados's throwaway BlueStore Ceph cluster (ceph) and its targets, jobs and rados bench (radostargets),
and the check that a tool's output reached its stdout (stdoutguard)."""

from __future__ import annotations

__all__ = ["blockfs", "ceph", "counters", "fio", "hostmem", "mixed", "nbdservers", "options", "postgres", "procs",
           "radostargets", "report", "stdoutguard", "targets", "timing", "vcpu"]
