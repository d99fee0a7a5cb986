"""The sustained-load and application benchmarks' parsing (tools/benchlib/mixed.py, postgres.py),
and one short real fio run of the mixed job on a plain file (issue 25)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from benchlib.fio import FioSettings  # noqa: E402
from benchlib.mixed import MIXED_JOBS, mixed_report, parse_iops_log, run_mixed, stall_seconds  # noqa: E402
from benchlib.postgres import parse_tps  # noqa: E402
from benchlib.procs import BenchError  # noqa: E402

# fio 3.33, --write_iops_log with --log_avg_msec=1000: msec, IOPS, direction (0 read, 1 write), bs, offset
FIO_LOG = """1000, 3632, 0, 0, 0
1000, 1632, 1, 0, 0
2000, 0, 0, 0, 0
2000, 0, 1, 0, 0
3003, 4266, 0, 0, 0
3003, 1819, 1, 0, 0
5001, 10, 1, 0, 0
"""

PGBENCH_OUT = """pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: TPC-B (sort of)>
scaling factor: 20
query mode: simple
number of clients: 4
number of threads: 4
maximum number of tries: 1
duration: 60 s
number of transactions actually processed: 41234
number of failed transactions: 0 (0.000%)
latency average = 5.818 ms
initial connection time = 12.345 ms
tps = 687.512345 (without initial connection time)
"""


def test_iops_log_adds_reads_and_writes_per_window() -> None:
    assert parse_iops_log(FIO_LOG) == {1000: 5264.0, 2000: 0.0, 3003: 6085.0, 5001: 10.0}


def test_stall_seconds_are_zero_windows_and_missing_windows() -> None:
    samples = parse_iops_log(FIO_LOG)
    # second 2 logged zero completions; second 4 logged nothing at all; second 5 is the last (partial)
    assert stall_seconds(samples, 5) == [2, 4]
    assert stall_seconds({1000: 1.0, 2000: 2.0, 3000: 3.0}, 3) == []


def test_pgbench_summary() -> None:
    r = parse_tps(PGBENCH_OUT)
    assert r == {"tps": 687.512345, "latency_ms": 5.818, "transactions": 41234.0, "failed": 0.0}
    with pytest.raises(BenchError, match="no 'tps"):
        parse_tps("pgbench: error: connection to server failed")


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio not installed")
def test_mixed_job_runs_and_logs_every_second(tmp_path: Path) -> None:
    target = tmp_path / "file"
    with open(target, "wb") as f:
        f.truncate(16 << 20)
    settings = FioSettings(16 << 20, 0, 2, 30, None)
    r = run_mixed(settings, MIXED_JOBS[0], target, tmp_path)
    assert r["read_iops"] > 0 and r["write_iops"] > 0
    assert 0.6 < r["read_iops"] / r["value"] < 0.8  # --rwmixread=70
    assert r["fsyncs"] >= r["write_iops"] * 2 // 32 * 0.9  # an fsync every 32 writes, over 2 s
    assert r["seconds_logged"] >= 1 and r["stall_seconds"] == []
    assert "--fsync=32" in r["command"] and "--log_avg_msec=1000" in r["command"]


def test_stress_ng_bogo_ops() -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
    from bench_stall import bogo_ops

    out = ("stress-ng: metrc: [28890] stressor       bogo ops real time  usr time  sys time   bogo ops/s\n"
           "stress-ng: metrc: [28890] iomix             36806     60.07      1.74      5.93       612.75\n")
    assert bogo_ops(out) == 36806
    assert bogo_ops("stress-ng: info: no metrics") is None


def test_mixed_report_splits_the_write_amplification() -> None:
    """vstor's line says what the maintenance loop rewrote (GC moves, compactions) beside the
    journal's amplification, and the verdict line judges the amplification against 1.5."""
    job = MIXED_JOBS[0]
    row = {"read_iops": 6067, "write_iops": 2601, "read_p99_us": 305.2, "write_p99_us": 268.3,
           "fsync_p99_us": 1663.0, "clat_p99_us": 300.0, "min_second_iops": 5913, "stall_seconds": [],
           "wa_device": 1.54, "wa_disk": 1.768, "wa_journal": 1.398}
    vstor = {**row, "maintenance_bytes": {"relocated_bytes": 480_400_000, "compacted_bytes": 10_000_000,
                                          "defrag_bytes": 0}, "prepared_bytes": 16_777_216}
    results = {"passthrough": {"kind": "passthrough", "jobs": {job.name: {**row, "clat_p99_us": 150.0}}},
               "vstor-plain": {"kind": "vstor", "jobs": {job.name: vstor}}}
    text = mixed_report(results, {"vstor-plain/passthrough": {job.name: 0.49}}, (job,))
    assert ("WA device 1.54, dirtied 1.768, journal 1.398 (GC moves 470.4 MB, compactions 10.0 MB, of them "
            "defragmentation 0.0 MB); zeros written ahead of the journal tail 16.8 MB") in text
    assert "IOPS 0.49 (NOT met, >= 0.8); p99 2.0x (met, <= 3x); stalls 0 (met, none); WA journal 1.398 (met" in text


def test_commit_bench_reads_fio_and_reports_ratios() -> None:
    """tools/bench_commit.py: fio's JSON write IOPS, a clear error without them, and the ratios
    of vstor to each baseline (a job a baseline lacks shows a dash)."""
    from tools.bench_commit import JOBS, parse_fio_iops, report
    from tools.benchlib.procs import BenchError as ToolsBenchError  # the package's class, as bench_commit raises it

    assert parse_fio_iops('{"jobs": [{"write": {"iops": 2512.49}}]}') == 2512.5
    with pytest.raises(ToolsBenchError, match="no write figure"):
        parse_fio_iops("fio: pid=1, err=5/file:io_u.c")
    rates = {"loop": dict.fromkeys(JOBS, 4000.0), "vstor": dict.fromkeys(JOBS, 2000.0)}
    rates["loop"]["sqlite-delete"] = 0.0
    results = {k: {"error": None, "rates": v} for k, v in rates.items()}
    results["passthrough"] = {"error": "mkfs.ext4 failed", "rates": {}}
    lines = report(results)
    assert lines[0].split() == ["target", *JOBS]
    assert "FAILED: mkfs.ext4 failed" in lines[3]
    assert lines[4].split() == ["vstor/loop", "0.50", "0.50", "0.50", "-"]
    assert len(lines) == 5  # no vstor/passthrough line: that baseline failed
