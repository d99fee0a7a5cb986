"""Governance rules: which control operations need an enrolled admin's one-time code, which of
those are destructive (with approval required, they wait for a second admin), and what the
guard decides for one request. Pure logic: the control adapter (vstor/control/ops/governance.py)
applies it where every control request is dispatched.

Adding a guarded operation is one line in ``GUARDED``: its control op name (as the CLI sends
it, like "backup.policy.delete") and a ``Rule``. Every op in the table needs ``--as NAME --otp
CODE`` once any admin is enrolled (before that, nothing is guarded: the first enrolment is the
bootstrap).
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from vstor.backup.governance.admins import AdminStore
from vstor.backup.rules.retention import parse_duration
from vstor.errors import Refused, UsageError
from vstor.store.catalog import compliance

__all__ = ["GUARDED", "Decision", "Rule", "decide", "job_locks", "parse_until", "rule_for"]


@dataclass(frozen=True)
class Rule:
    destructive: bool | Callable[[dict], bool] = False  # with approval on: waits for a second admin
    audited: bool = False  # the op writes its own audit entry; else the guard writes one (op, args)
    when: Callable[[dict], bool] | None = None  # guarded only for these arguments (None: always)

    def is_destructive(self, args: dict) -> bool:
        return bool(self.destructive(args) if callable(self.destructive) else self.destructive)


GUARDED: dict[str, Rule] = {
    # admins and approval
    "admin.enroll": Rule(),  # free for the first admin (nothing is guarded before)
    "admin.remove": Rule(destructive=True),
    "admin.require_approval": Rule(destructive=lambda a: not a.get("on")),  # turning it off
    # backup policies, schedules, retention, keys
    "backup.policy.create": Rule(audited=True),
    "backup.policy.delete": Rule(destructive=True, audited=True),
    "backup.expire": Rule(destructive=True, audited=True, when=lambda a: not a.get("dry_run")),
    "backup.catalog.rebuild": Rule(audited=True),
    "key.rotate": Rule(audited=True),
    # restore drills: defining one (schedule, check) and removing one; running one is not a change
    "backup.drill": Rule(audited=True, when=lambda a: any(a.get(k) for k in ("schedule", "check", "check_timeout"))),
    "backup.drill.remove": Rule(destructive=True, audited=True),
    # backup clients: who may send what (client/array/service.py audits both itself)
    "client.register": Rule(audited=True),
    "client.remove": Rule(destructive=True, audited=True),
    # compliance locks
    "backup.lock": Rule(),
    "snapshot.lock": Rule(),
    # snapshots (NetApp MAV protects snapshot delete and snapshot policy changes)
    "snapshot.delete": Rule(destructive=True),
    "snapshot.policy.set": Rule(audited=True),  # also in service.AUDITED
}


_BY_HANDLER = {op.replace(".", "_"): rule for op, rule in GUARDED.items()}


def rule_for(op: str) -> Rule | None:
    """The rule of ``op``, however it is spelt: "snapshot.policy_set" and "snapshot.policy.set" name
    the same handler (op_snapshot_policy_set), so they are one op here too (no way around the guard)."""
    return _BY_HANDLER.get(op.replace(".", "_"))


@dataclass(frozen=True)
class Decision:
    guarded: bool  # the op is in the table (the guard writes its audit entry unless rule.audited)
    admin: str | None = None  # the admin whose code was accepted
    approval: bool = False  # make a pending request instead of running


def decide(op: str, args: dict, auth: dict | None, admins: AdminStore) -> Decision:
    """What to do with request ``op``: run it (as an admin, or unguarded), or ask for approval.
    Raises Refused when an admin's code is needed and missing, wrong or replayed."""
    rule = rule_for(op)
    if rule is None:
        return Decision(False)
    if rule.when is not None and not rule.when(args):
        return Decision(False)
    if not admins.names():
        return Decision(True)  # no admin yet: the bootstrap
    if not auth or not auth.get("as") or not auth.get("otp"):
        raise Refused(f"'{op}' changes governed configuration: give an enrolled admin and their one-time code "
                      "with --as NAME --otp CODE")
    admins.verify(str(auth["as"]), str(auth["otp"]))
    return Decision(True, str(auth["as"]), rule.is_destructive(args) and admins.require_approval())


_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2})?)?Z?$")


def parse_until(text: str, now: float) -> float:
    """A lock date: "2033-01-31", "2033-01-31T12:00[:00]" (UTC), or a duration from the compliance
    time ``now`` like "7y", "90d"."""
    s = str(text).strip()
    if _DATE_RE.match(s):
        s = s.rstrip("Z").replace(" ", "T")
        fmt = {10: "%Y-%m-%d", 16: "%Y-%m-%dT%H:%M", 19: "%Y-%m-%dT%H:%M:%S"}[len(s)]
        try:
            return float(calendar.timegm(time.strptime(s, fmt)))
        except ValueError:
            raise UsageError(f"invalid date {text!r}: use YYYY-MM-DD[THH:MM[:SS]] (UTC) or a duration like 7y"
                             ) from None
    try:
        return now + parse_duration(s)
    except UsageError:
        raise UsageError(f"invalid --until {text!r}: use a date YYYY-MM-DD[THH:MM[:SS]] (UTC) or a duration "
                         "like 90d or 7y") from None


def job_locks(jobs: list[dict], locks: dict[str, dict], now: float) -> dict[int, str]:
    """Jobs under a compliance lock at compliance time ``now`` (their own lock or their policy's),
    with why they stay: the reason retention's plan shows."""
    out: dict[int, str] = {}
    for j in jobs:
        dates = [locks[k]["until"] for k in (compliance.job_key(j["id"]), compliance.policy_key(j["policy"]))
                 if k in locks]
        if dates and max(dates) > now:
            out[j["id"]] = f"under a compliance lock until {compliance.show_time(max(dates))}"
    return out
