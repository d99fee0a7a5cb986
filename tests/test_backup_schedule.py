"""Backup schedules: cron via cronsim, the Scheduler on a ManualClock."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from vstor.backup.schedule import Scheduler, next_fire, parse_cron
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
