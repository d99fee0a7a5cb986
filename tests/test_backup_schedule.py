"""Backup schedules (cron via cronsim, the Scheduler on a ManualClock) and the backup report."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from vstor.backup.rules.report import build_report, plot, render_text
from vstor.backup.rules.schedule import Scheduler, next_fire, parse_cron
from vstor.clock import ManualClock
from vstor.errors import UsageError


def ts(text: str) -> float:
    """'2024-01-01 02:00' (UTC) -> epoch seconds."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()


# --- cron -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "expr, field",
    [("0 25 * * *", "hour"), ("61 * * * *", "minute"), ("0 0 32 * *", "day-of-month"),
     ("0 0 * 13 *", "month"), ("0 0 * * 8", "day-of-week"), ("0 2 * * funday", "day-of-week")],
)
def test_parse_cron_names_the_bad_field(expr, field):
    with pytest.raises(UsageError) as e:
        parse_cron(expr)
    msg = str(e.value)
    assert f"bad {field} field" in msg and "\n" not in msg


@pytest.mark.parametrize("expr", ["", "   ", "* * *", "0 0 * * * *", "@daily"])
def test_parse_cron_wants_five_fields(expr):
    with pytest.raises(UsageError, match="cron"):
        parse_cron(expr)


def test_parse_cron_normalizes():
    assert parse_cron("  0   2 * *  mon-fri ") == "0 2 * * MON-FRI"
    assert parse_cron("*/15 1,13 1-7 JAN,jul 0") == "*/15 1,13 1-7 JAN,JUL 0"


def test_next_fire_is_strictly_after():
    assert next_fire("0 2 * * *", ts("2024-01-01 01:59")) == ts("2024-01-01 02:00")
    assert next_fire("0 2 * * *", ts("2024-01-01 02:00")) == ts("2024-01-02 02:00")
    assert next_fire("0 2 * * *", ts("2024-01-01 02:00") - 0.5) == ts("2024-01-01 02:00")
    assert next_fire("30 1 * * SUN", ts("2024-01-01 00:00")) == ts("2024-01-07 01:30")  # Monday -> Sunday
    with pytest.raises(UsageError):
        next_fire("0 2 * *", 0.0)


# --- Scheduler ------------------------------------------------------------------------------

class Engine:
    """Fake catalog and job runner behind the Scheduler's callables."""

    def __init__(self, policies: list[dict]) -> None:
        self.policies = policies
        self.fired: dict[str, float] = {}
        self.started: list[str] = []
        self.busy: set[str] = set()
        self.broken: set[str] = set()

    def start(self, name: str) -> None:
        if name in self.broken:
            raise RuntimeError(f"no drive for {name}")
        self.started.append(name)
        self.busy.add(name)

    def scheduler(self, clock: ManualClock) -> Scheduler:
        return Scheduler(clock, lambda: self.policies, self.fired.get, self.fired.__setitem__,
                         self.start, lambda n: n in self.busy)


def policy(name: str, schedule: str | None, created: str = "2024-01-01 00:00") -> dict:
    return {"name": name, "schedule": schedule, "created": ts(created)}


def test_fires_at_the_right_time_and_not_twice():
    clock = ManualClock(ts("2024-01-01 01:00"))
    eng = Engine([policy("nightly", "0 2 * * *")])
    s = eng.scheduler(clock)
    assert s.next_for(eng.policies[0]) == ts("2024-01-01 02:00")
    clock.advance(3599)
    assert s.tick() == [] and eng.started == []
    clock.advance(1)
    assert s.due(eng.policies[0], clock.time()) == ts("2024-01-01 02:00")
    [line] = s.tick()
    assert "nightly: started" in line
    assert eng.started == ["nightly"] and eng.fired == {"nightly": ts("2024-01-01 02:00")}
    eng.busy.clear()
    clock.advance(60)
    assert s.tick() == [] and eng.started == ["nightly"]
    assert s.next_for(eng.policies[0]) == ts("2024-01-02 02:00")
    clock.now = ts("2024-01-02 02:00")
    s.tick()
    assert eng.started == ["nightly", "nightly"]


def test_missed_runs_while_down_run_once():
    clock = ManualClock(ts("2024-01-01 02:00"))
    eng = Engine([policy("nightly", "0 2 * * *")])
    s = eng.scheduler(clock)
    s.tick()
    eng.busy.clear()
    clock.advance(3 * 86400 + 3600)  # down over three firing times
    assert s.due(eng.policies[0], clock.time()) == ts("2024-01-02 02:00")
    s.tick()
    eng.busy.clear()
    s.tick()
    clock.advance(60)
    s.tick()
    assert eng.started == ["nightly", "nightly"]
    assert eng.fired["nightly"] == ts("2024-01-04 03:00")
    assert s.next_for(eng.policies[0]) == ts("2024-01-05 02:00")


def test_no_overlap_fires_when_the_run_ends():
    clock = ManualClock(ts("2024-01-01 00:00"))
    eng = Engine([policy("hourly", "0 * * * *")])
    s = eng.scheduler(clock)
    clock.advance(3600)
    s.tick()
    assert eng.started == ["hourly"]
    clock.advance(3600)  # next firing time, but the first run is still going
    [line] = s.tick()
    assert "still going" in line
    clock.advance(600)
    s.tick()
    assert eng.started == ["hourly"] and eng.fired["hourly"] == ts("2024-01-01 01:00")
    eng.busy.clear()  # the run ends at 02:10
    clock.advance(30)
    s.tick()
    assert eng.started == ["hourly", "hourly"]
    assert eng.fired["hourly"] == ts("2024-01-01 02:10") + 30


def test_a_raising_start_is_logged_and_others_still_run(caplog):
    clock = ManualClock(ts("2024-01-01 02:00"))
    eng = Engine([policy("a", "0 2 * * *"), policy("b", "0 2 * * *"), policy("c", "0 2 * * *")])
    eng.broken.add("b")
    s = eng.scheduler(clock)
    with caplog.at_level(logging.ERROR, logger="vstor.backup.schedule"):
        lines = s.tick()
    assert eng.started == ["a", "c"]
    assert any("b: start failed: RuntimeError: no drive for b" in x for x in lines)
    assert "starting policy b" in caplog.text and "no drive for b" in caplog.text
    # the failed firing is consumed: no retry at every tick, the next firing time tries again
    eng.busy.clear()
    clock.advance(60)
    assert s.tick() == []


def test_a_bad_policy_does_not_stop_the_others():
    clock = ManualClock(ts("2024-01-01 02:00"))
    eng = Engine([policy("bad", "0 99 * * *"), policy("good", "0 2 * * *")])
    lines = eng.scheduler(clock).tick()
    assert eng.started == ["good"]
    assert any(x.startswith("bad: not checked: invalid schedule") for x in lines)


def test_manual_only_policies_never_fire():
    clock = ManualClock(ts("2024-01-01 00:00"))
    eng = Engine([policy("adhoc", None), policy("blank", "")])
    s = eng.scheduler(clock)
    for _ in range(5):
        clock.advance(30 * 86400)
        assert s.tick() == []
    assert eng.started == [] and eng.fired == {}
    assert s.next_for(eng.policies[0]) is None and s.due(eng.policies[1], clock.time()) is None


# --- report ---------------------------------------------------------------------------------

NOW = ts("2024-03-10 12:00")
G = 1 << 30


def job(id, policy, level, status, started, bytes=0, verify=None, minutes=30):
    t = ts(started)
    ended = None if status in ("running", "waiting") else t + 60 * minutes
    return {"id": id, "policy": policy, "level": level, "status": status, "started": t,
            "ended": ended, "bytes": bytes, "verify": verify}


def restore(job_id, policy, started, seconds, bytes, status="done"):
    t = ts(started)
    return {"job": job_id, "policy": policy, "started": t, "ended": t + seconds, "bytes": bytes,
            "status": status, "seconds": seconds}


JOBS = [
    job(1, "db", "full", "done", "2024-01-15 02:00", 8 * G, "ok"),  # outside the 30-day window
    job(2, "db", "incremental", "done", "2024-03-08 02:00", G, "ok"),
    job(3, "db", "incremental", "failed", "2024-03-09 02:00", 100, None),
    job(4, "db", "full", "done", "2024-03-10 02:00", 10 * G, "failed"),
    job(5, "web", "full", "done", "2024-03-09 03:00", 2 * G, "ok"),
    job(6, "web", "incremental", "expired", "2024-02-20 03:00", G, "ok"),
    job(7, "web", "incremental", "done", "2024-03-10 03:00", G // 2, "skipped"),
    job(8, "web", "incremental", "running", "2024-03-10 11:00"),
]
# 20 successful restores of 1..20 s, plus a failed one whose time must not count
RESTORES = [restore(2, "db", "2024-03-09 10:00", float(s), int(s * 50 * 10**6)) for s in range(1, 21)]
RESTORES += [restore(5, "web", "2024-03-10 10:00", 999.0, 0, status="failed")]


def test_report_headline_figures():
    r = build_report(JOBS, RESTORES, NOW)
    o = r["overall"]
    assert o["jobs"] == 8
    assert o["completion_rate"] == 5 / 6  # done 1,2,4,5,7; failed 3; expired/running not finished
    assert o["verify_success_rate"] == 4 / 5  # ok 1,2,5,6; failed 4; skipped/None not counted
    assert o["restore_avg_s"] == 10.5
    assert o["restore_p95_s"] == 19.0  # nearest rank: ceil(0.95 * 20) = 19th of 1..20
    assert o["restore_mb_per_s_avg"] == pytest.approx(50.0)
    assert o["restores"] == 20 and o["restores_failed"] == 1
    assert o["full_bytes_avg"] == (8 + 10 + 2) * G / 3
    assert o["incremental_bytes_avg"] == (G + G // 2) / 2
    assert o["last_job"] == {"id": 8, "status": "running", "time": ts("2024-03-10 11:00")}
    assert o["last_success"] == {"id": 7, "time": ts("2024-03-10 03:30")}


def test_report_per_policy_and_daily():
    r = build_report(JOBS, RESTORES, NOW)
    db, web = r["policies"]["db"], r["policies"]["web"]
    assert sorted(r["policies"]) == ["db", "web"]
    assert (db["jobs"], db["completion_rate"], db["verify_success_rate"]) == (4, 3 / 4, 2 / 3)
    assert db["restore_p95_s"] == 19.0 and db["last_job"]["id"] == 4
    assert (web["jobs"], web["completion_rate"], web["verify_success_rate"]) == (4, 1.0, 1.0)
    assert web["restore_avg_s"] is None and web["restore_p95_s"] is None and web["restores_failed"] == 1
    assert web["full_bytes_avg"] == 2 * G and web["incremental_bytes_avg"] == G // 2

    daily = r["daily"]
    assert len(daily) == 30 and daily[0]["day"] == "2024-02-10" and daily[-1]["day"] == "2024-03-10"
    by_day = {d["day"]: d for d in daily}
    assert sum(d["jobs"] for d in daily) == 7  # job 1 is older than 30 days
    assert by_day["2024-03-09"]["completion_rate"] == 0.5 and by_day["2024-03-09"]["restore_p95_s"] == 19.0
    assert by_day["2024-03-10"]["jobs"] == 3 and by_day["2024-03-10"]["completion_rate"] == 1.0
    assert by_day["2024-03-10"]["verify_success_rate"] == 0.0
    assert by_day["2024-02-20"]["jobs"] == 1 and by_day["2024-02-20"]["completion_rate"] is None
    assert by_day["2024-03-01"]["jobs"] == 0 and by_day["2024-03-01"]["restore_avg_s"] is None
    assert len(build_report(JOBS, [], NOW, days=7)["daily"]) == 7
    with pytest.raises(UsageError):
        build_report(JOBS, [], NOW, days=0)


def test_report_empty():
    o = build_report([], [], NOW)["overall"]
    assert o["jobs"] == 0 and o["completion_rate"] is None and o["verify_success_rate"] is None
    assert o["restore_p95_s"] is None and o["last_job"] is None and o["last_success"] is None


def test_render_text_headlines_first():
    text = render_text(build_report(JOBS, RESTORES, NOW))
    lines = text.splitlines()
    assert lines[0] == "Job completion rate   83.3%  (5 done, 1 failed)"
    assert lines[1] == "Verify success rate   80.0%  (4 ok, 1 failed)"
    assert lines[2] == "Restore time          avg 10.5s, p95 19.0s  (20 restores, 1 failed)"
    assert lines[3].startswith("Last success          2024-03-10 03:30Z (job 7), RPO exposure 30600s")
    assert "6.7G" in text and "768M" in text  # full and incremental averages in binary units
    table = [x for x in lines if x.startswith(("policy", "(all)", "db ", "web "))]
    assert len(table) == 4
    col = table[0].index("completion") + len("completion")
    assert all(row[col - 1] == "%" for row in table[1:])  # right-aligned under the header
    assert "2024-03-09" in text and "50.0%" in text
    assert "0 done, 0 failed" in render_text(build_report([], [], NOW))


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "report.png"
    plot(build_report(JOBS, RESTORES, NOW), str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(UsageError, match="cannot write"):
        plot(build_report([], [], NOW), str(tmp_path / "missing" / "x.png"))


def test_plot_without_matplotlib(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(UsageError, match=r"--plot needs matplotlib: pip install 'vstor\[plot\]'"):
        plot(build_report([], [], NOW), str(tmp_path / "x.png"))
