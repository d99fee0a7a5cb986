"""The benchmark counters' parsing and arithmetic (tools/benchlib/counters.py), on sample text."""

from __future__ import annotations

import os

from tools.benchlib.counters import (
    Snapshot,
    cpu_per_request,
    delta,
    disk_of,
    parse_cpu,
    parse_diskstat,
    parse_proc_cpu,
    parse_proc_faults,
    parse_proc_times,
    with_server_cpu,
)

DISKSTAT = "  1000  200  409600  3000  5  0  40  1  0  2500  3100  0 0 0 0 0 0\n"
CPU = "cpu  100 5 300 9000 40 7 3 11 0 0\ncpu0 50 2 150 4500 20 3 1 5 0 0\n"
PROC = "4242 (python3 -m vstor) S 1 4242 4242 0 -1 4194560 100 3 7 2 250 75 0 0 20 0 9 0\n"


def test_parsers_pick_the_documented_fields() -> None:
    assert parse_diskstat(DISKSTAT) == {"reads": 1000, "merged": 200, "sectors": 409600, "read_ms": 3000,
                                        "sectors_written": 40, "busy_ms": 2500}
    cpu = parse_cpu(CPU, hz=100)
    assert (cpu["user"], cpu["system"], cpu["iowait"], cpu["softirq"], cpu["steal"]) == (1.0, 3.0, 0.4, 0.03, 0.11)
    assert parse_proc_cpu(PROC, hz=100) == 3.25  # utime 250 + stime 75 ticks; the name holds spaces
    assert parse_proc_faults(PROC) == 107  # minflt 100 + majflt 7
    assert parse_proc_times(PROC, hz=100) == (2.5, 0.75)  # user, then system: a swap would show here


def test_cpu_per_request_splits_user_and_system_per_request() -> None:
    assert cpu_per_request((1.0, 2.0), (1.5, 2.25), 10_000) == {"user": 50.0, "sys": 25.0}
    assert cpu_per_request((1.0, 2.0), (1.0, 2.0), 0) == {"user": 0.0, "sys": 0.0}  # no request: no division by 0


def test_with_server_cpu_measures_a_live_server_and_skips_a_missing_one() -> None:
    def burn(n: int) -> dict:
        end = os.times().user + 0.05
        while os.times().user < end:  # 50 ms of this process's user CPU
            pass
        return {"ios": n}

    r = with_server_cpu(os.getpid(), burn, 1000)
    assert r["server_cpu_us"]["user"] >= 30.0, r  # >= 30 ms over 1,000 requests (clock ticks are 10 ms)
    assert "server_cpu_us" not in with_server_cpu(None, burn, 5), "no server, no figure"
    assert "server_cpu_us" not in with_server_cpu(2**22 + 1, burn, 5), "a server that is gone, no figure"


def test_delta_of_one_pass() -> None:
    a = Snapshot({"reads": 10, "merged": 0, "sectors": 0, "read_ms": 0, "busy_ms": 1000},
                 {"user": 1.0, "nice": 0.0, "system": 2.0, "idle": 0.0, "iowait": 0.5, "irq": 0.0,
                  "softirq": 0.1, "steal": 0.0}, 4.0, 1000)
    b = Snapshot({"reads": 522, "merged": 0, "sectors": 2 * 1024 * 1024 * 2, "read_ms": 0, "busy_ms": 1500},
                 {"user": 1.5, "nice": 0.0, "system": 4.0, "idle": 0.0, "iowait": 0.75, "irq": 0.0,
                  "softirq": 0.2, "steal": 0.25}, 5.5, 1512)
    d = delta(a, b, seconds=2.0, nbytes=2 << 30)
    assert d["mb_s"] == (2 << 30) / 2.0 / 1e6
    assert d["disk_mib"] == 2048 and d["disk_requests"] == 512 and d["avg_request_kib"] == 4096
    assert d["disk_busy"] == 0.25
    assert d["server_cpu_s"] == 1.5
    assert d["server_faults_per_mib"] == 0.25  # 512 faults over 2048 MiB
    assert abs(d["sys_s"] - 2.1) < 1e-9 and d["user_s"] == 0.5 and d["iowait_s"] == 0.25 and d["steal_s"] == 0.25


def test_disk_of_names_a_whole_disk_with_statistics() -> None:
    try:
        disk = disk_of("/var/tmp")
    except OSError as e:  # e.g. an overlay root: the error says which device had no statistics
        assert "block device" in str(e)
        return
    assert os.path.exists(f"/sys/block/{disk}/stat")
