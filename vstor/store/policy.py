"""Snapshot schedules and retention. Pure: the caller passes the time (an injected clock).

A policy on a group or volume takes an automatic snapshot every ``every`` seconds and keeps
the union of:
  * the ``keep_last`` newest automatic snapshots;
  * for each of the ``keep_daily`` most recent UTC days that have automatic snapshots, the
    newest one of that day.
Retention prunes automatic snapshots only; snapshots taken by hand are never pruned.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from vstor.store.catalog import Policy, Snapshot


def due(policy: Policy, autos: Sequence[Snapshot], now: float) -> bool:
    """Whether a new automatic snapshot is due (none yet, or the newest is ``every`` old)."""
    return not autos or now - max(s.created for s in autos) >= policy.every


def to_prune(policy: Policy, autos: Sequence[Snapshot]) -> list[Snapshot]:
    """The automatic snapshots retention removes, oldest first."""
    newest_first = sorted(autos, key=lambda s: (s.created, s.id), reverse=True)
    keep = {s.id for s in newest_first[: policy.keep_last]}
    days: list[str] = []
    for s in newest_first:
        day = time.strftime("%Y-%m-%d", time.gmtime(s.created))
        if day not in days:
            days.append(day)
            if len(days) > policy.keep_daily:
                break
            keep.add(s.id)
    return [s for s in reversed(newest_first) if s.id not in keep]
