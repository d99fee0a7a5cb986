"""vstor's benchmarks, demo and maintenance tools, one module per tool, each run from the repository's
root as ``python -m tools.NAME`` (``--help`` lists its options). The benchmarks share tools.benchlib:
one fio runner and fio-JSON parser (benchlib.fio), one table printer (benchlib.report.table), one
timer (benchlib.timing), and process, mount and target handling; tools.bench_snapshots is a
subpackage with one module per part. The tools import vstor, vm and tests' kits as packages (the
repository's root on sys.path, as ``-m`` puts it); none patches sys.path. ``tools/dr-drill`` is the
one script (it re-executes itself with the venv's interpreter)."""

from __future__ import annotations

__all__ = [
    "aged_volume", "bench_aged_store", "bench_backup", "bench_clients", "bench_commit", "bench_cow_write", "bench_fio",
    "bench_fragments", "bench_gc_move", "bench_memory", "bench_nbd", "bench_pair_pinned", "bench_pgbench",
    "bench_rados", "bench_rados_media", "bench_rados_takeover", "bench_read_into", "bench_read_pipeline",
    "bench_replay", "bench_replication", "bench_rollover",
    "bench_segment_gc", "bench_small_write", "bench_snapshot_gc", "bench_snapshot_list", "bench_snapshots",
    "bench_stall", "bench_tape", "bench_tuning", "benchlib", "demo", "lagplot", "make_manpages",
    "passthrough_fuse", "steady_memory",
]
