"""When backup policies run: cron schedules evaluated in UTC with cronsim.

Guarantees:

* ``parse_cron`` accepts exactly the 5-field cron syntax cronsim understands (minute hour
  day-of-month month day-of-week, with lists, ranges, steps, names, ``L`` and ``#``) and names
  the bad field in a one-line ``UsageError`` otherwise.
* ``next_fire(expr, after)`` is strictly greater than ``after``; all times are epoch seconds
  interpreted in UTC, so daylight-saving changes never skip or repeat a run.
* ``Scheduler.tick`` starts a policy at most once per tick and never while a run of the same
  policy is still going (no overlap). Runs missed while the array was down collapse into one
  run. A policy whose ``start`` raises is logged and skipped; the others still run.
* The scheduler keeps no state of its own: every decision comes from ``last_fire``, so a
  restarted array resumes where the catalog says it stopped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from cronsim import CronSim, CronSimError

from vstor.clock import Clock
from vstor.errlog import describe, log_failure
from vstor.errors import UsageError

log = logging.getLogger("vstor.backup.schedule")  # the log name, kept when the module moved

# cronsim's field names (as in its "Bad <name>" messages) and the values each field takes.
_FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT"),
)
_LAYOUT = " ".join(name for name, _ in _FIELDS)


def parse_cron(expr: str) -> str:
    """Validate a 5-field cron expression and return it normalized: fields separated by one
    space, names upper-cased ("0  2 * * mon" -> "0 2 * * MON").

    Raises UsageError with one line naming the bad field and its allowed values.
    """
    if not isinstance(expr, str) or not expr.strip():
        raise UsageError(f"invalid schedule {expr!r}: expected a cron expression ({_LAYOUT})")
    parts = expr.upper().split()
    normalized = " ".join(parts)
    if len(parts) != len(_FIELDS):
        raise UsageError(
            f"invalid schedule {normalized!r}: a cron schedule has 5 fields ({_LAYOUT}), this one has {len(parts)}"
        )
    try:
        CronSim(normalized, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as e:
        for i, (name, allowed) in enumerate(_FIELDS):
            if str(e) == f"Bad {name}":
                raise UsageError(
                    f"invalid schedule {normalized!r}: bad {name} field {parts[i]!r} (allowed: {allowed})"
                ) from None
        raise UsageError(f"invalid schedule {normalized!r}: {e}") from None
    return normalized


def next_fire(expr: str, after: float) -> float:
    """The first firing time of ``expr`` strictly after ``after`` (epoch seconds, UTC).

    Raises UsageError for an invalid expression or one that never fires (within cronsim's
    50-year search horizon, e.g. "0 0 31 2 *" is refused by ``parse_cron`` already).
    """
    normalized = parse_cron(expr)
    start = datetime.fromtimestamp(after, tz=UTC)
    try:
        fire = next(CronSim(normalized, start))
    except StopIteration:
        raise UsageError(f"schedule {normalized!r} never fires after {_iso(after)}") from None
    return fire.timestamp()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


class Scheduler:
    """Starts backup policies when their cron schedule says so.

    The scheduler is driven from outside: the engine calls ``tick()`` periodically (say every
    30 s, through its clock). All inputs are callables, so the catalog stays the one source of
    truth:

    * ``policies()`` -> dicts with "name", "schedule" (cron string; None or "" = manual only)
      and "created" (epoch seconds);
    * ``last_fire(name)`` -> the time the scheduler last started it, or None;
    * ``record_fire(name, t)`` stores that time;
    * ``start(name)`` starts a run; ``running(name)`` says whether a run is in progress.

    A policy is due when its first firing time after ``last_fire`` (after ``created`` if it
    never fired) is <= now. A due policy whose previous run is still going is not started and
    nothing is recorded, so it starts at the first tick after that run ends. A start that raises
    still records the fire: the failure is logged once and the policy waits for its next firing
    time rather than retrying at every tick.
    """

    def __init__(
        self,
        clock: Clock,
        policies: Callable[[], list[dict]],
        last_fire: Callable[[str], float | None],
        record_fire: Callable[[str, float], None],
        start: Callable[[str], object],
        running: Callable[[str], bool],
    ) -> None:
        self.clock = clock
        self._policies = policies
        self._last_fire = last_fire
        self._record_fire = record_fire
        self._start = start
        self._running = running
        self._lock = threading.Lock()

    def _base(self, policy: dict) -> float:
        last = self._last_fire(policy["name"])
        return float(policy["created"]) if last is None else last

    def next_for(self, policy: dict) -> float | None:
        """The policy's next firing time, for display; None for a manual-only policy. A time
        that is not after now means the run is pending (it starts at the next tick, or once
        the running one ends)."""
        schedule = policy.get("schedule")
        if not schedule:
            return None
        return next_fire(schedule, self._base(policy))

    def due(self, policy: dict, now: float) -> float | None:
        """The firing time the policy is due for (<= ``now``), or None if it is not due."""
        t = self.next_for(policy)
        return t if t is not None and t <= now else None

    def tick(self) -> list[str]:
        """Start every due policy that is not already running; return one line per action."""
        with self._lock:
            now = self.clock.time()
            actions: list[str] = []
            try:
                policies = self._policies()
            except Exception as e:
                log_failure(log, "backup scheduler: cannot list policies", e)
                return [f"cannot list policies: {describe(e)}"]
            for policy in policies:
                line = self._tick_one(policy, now)
                if line:
                    actions.append(line)
            return actions

    def _tick_one(self, policy: dict, now: float) -> str | None:
        name = policy.get("name", "?")
        try:
            due = self.due(policy, now)
            if due is None:
                return None
            if self._running(name):
                return f"{name}: due since {_iso(due)}, previous run still going; starts when it ends"
        except Exception as e:
            log_failure(log, f"backup scheduler: policy {name}", e)
            return f"{name}: not checked: {describe(e)}"
        try:
            self._start(name)
        except Exception as e:
            log_failure(log, f"backup scheduler: starting policy {name} (due {_iso(due)})", e)
            line = f"{name}: start failed: {describe(e)}"
        else:
            log.info("backup scheduler: started policy %s (due %s)", name, _iso(due))
            line = f"{name}: started (due {_iso(due)})"
        try:
            self._record_fire(name, now)
        except Exception as e:
            log_failure(log, f"backup scheduler: recording the run of policy {name}", e)
            line += f"; not recorded: {describe(e)}"
        return line
