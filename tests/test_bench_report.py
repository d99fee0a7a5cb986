"""The benchmarks' shared round arithmetic (tools/benchlib/report.py), used by bench_fio,
bench_nbd and bench_rados: the median run per target and job, and the median of per-round
ratios (an even number of rounds takes the mean of the middle two, not the upper one)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.benchlib.report import combine, render, round_ratio  # noqa: E402


@dataclass(frozen=True)
class J:
    name: str


JOBS = (J("a"), J("b"))


def _res(a: float, b: float | None = None, **kw: object) -> dict:
    jobs = {"a": {"value": a}} | ({} if b is None else {"b": {"value": b}})
    return {"kind": "k", "jobs": jobs, "error": None, **kw}


def test_combine_takes_the_median_run_and_keeps_the_asked_keys_of_every_target() -> None:
    rounds = [{"x": _res(3, 1, tls=True)}, {"y": _res(5)}, {"x": _res(1, 2, tls=True)}, {"x": _res(2, error="boom")}]
    out = combine(rounds, JOBS, keep=("kind", "tls"))
    assert set(out) == {"x", "y"}, "a target missing from the first round is still reported"
    assert out["x"]["jobs"]["a"] == {"value": 2, "rounds": [1, 2, 3]}
    assert out["x"]["jobs"]["b"]["rounds"] == [1, 2] and out["x"]["tls"] is True and out["x"]["error"] == "boom"
    assert "b" not in out["y"]["jobs"]


def test_round_ratio_is_the_median_of_each_rounds_ratio() -> None:
    rounds = [{"v": _res(6, 1), "base": _res(10, 0)}, {"v": _res(8), "base": _res(10, 4)}]
    assert round_ratio(rounds, "v", "base", JOBS) == {"a": 0.7, "b": None}  # b: base 0, then v missing
    assert round_ratio(rounds + [{"v": _res(9), "base": _res(10)}], "v", "base", JOBS)["a"] == 0.8


def test_nbd_bench_multi_conn_jobs_split_a_sequential_pass_into_parts():
    """The four-connection jobs: a sequential pass gives each connection its quarter of the
    export (as nbdcopy does); a random job has each connection roam the whole export."""
    from tools.bench_nbd import JOBS, fio_args

    jobs = {j.name: j for j in JOBS}
    seq = fio_args(jobs["seq-read-4conn"], "nbd://b/e", 1 << 30, 8, 120)
    assert {"--numjobs=4", "--iodepth=4", "--size=268435456", "--offset_increment=268435456",
            "--group_reporting"} <= set(seq)
    rnd = fio_args(jobs["rand-read-4conn"], "nbd://b/e", 1 << 30, 8, 120)
    assert {"--numjobs=4", "--size=1073741824", "--group_reporting", "--time_based=1"} <= set(rnd)
    assert not any(a.startswith("--offset_increment") for a in rnd)
    one = fio_args(jobs["rand-read-qd16"], "nbd://b/e", 1 << 30, 8, 120)
    assert "--numjobs=1" in one and "--group_reporting" not in one


@dataclass(frozen=True)
class FJ:
    name: str
    metric: str


def test_render_shows_the_servers_cpu_per_request_only_where_measured() -> None:
    jobs = (FJ("seq-read", "MB/s"), FJ("rand-read", "IOPS"))
    results = {
        "passthrough": {"jobs": {"seq-read": {"value": 900.0, "server_cpu_us": {"user": 120.5, "sys": 300.0}},
                                 "rand-read": {"value": 16000, "server_cpu_us": {"user": 20.0, "sys": 19.5}}}},
        "vstor-plain": {"jobs": {"seq-read": {"value": 450.0}, "rand-read": {"value": 9000,
                                                                 "server_cpu_us": {"user": 58.7, "sys": 22.5}}}},
        "raw": {"jobs": {"seq-read": {"value": 1000.0}, "rand-read": {"value": 30000}}},
    }
    text = render(results, {}, jobs)  # type: ignore[arg-type]
    cpu = text.split("FUSE SERVER CPU PER REQUEST")[1].splitlines()
    assert cpu[2].split() == ["passthrough", "120.5+300.0", "20.0+19.5"]
    assert cpu[3].split() == ["vstor-plain", "-", "58.7+22.5"]
    assert not any(line.startswith("raw") for line in cpu), "a target with no server has no row"
