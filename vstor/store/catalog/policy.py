"""Snapshot schedules and retention. Pure: the caller passes the time (an injected clock).

A policy on a group or volume takes an automatic snapshot every ``every`` seconds and keeps
the union of:
  * the ``keep_last`` newest automatic snapshots;
  * for each of the ``keep_daily`` most recent UTC days that have automatic snapshots, the
    newest one of that day.
Retention prunes automatic snapshots only; snapshots taken by hand are never pruned.

A policy may also (or instead, with ``every`` 0) fire on activity: once ``after_written``
bytes were written to the owner's volumes since its last snapshot. The count is
PoolState.written (write and trim records journaled per volume, reproduced by replay, kept
in checkpoints); the baseline is each member's count recorded in the owner's newest snapshot
(any snapshot: by hand, by a policy or by a backup job; Member.written), or, before the
first one, the counts recorded when the policy was set (Policy.base). A volume with no
baseline counts from zero: its data is in no snapshot yet. Threshold snapshots are
debounced: none within ``min_interval`` seconds of the newest automatic snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from vstor.store.catalog.groups import Policy, Snapshot


def due(policy: Policy, autos: Sequence[Snapshot], now: float) -> bool:
    """Whether a new automatic snapshot is due by time (none yet, or the newest is ``every``
    old). A policy without a time schedule (``every`` 0) is never due by time."""
    if not policy.every:
        return False
    return not autos or now - max(s.created for s in autos) >= policy.every


def written_since(policy: Policy, snaps: Sequence[Snapshot], written: Mapping[int, int],
                  members: Sequence[int]) -> int:
    """Bytes written to ``members`` (volume ids) since the owner's newest snapshot in ``snaps``
    (or since the policy was set): ``written`` is PoolState.written."""
    if snaps:
        newest = max(snaps, key=lambda s: s.id)
        base = {m.vid: m.written for m in newest.members}
    else:
        base = {int(v): n for v, n in policy.base.items()}
    # max(0, ...): a counter below its baseline (a pool whose checkpoint predates the count) counts as 0
    return sum(max(0, written.get(v, 0) - base.get(v, 0)) for v in members)


def trigger(policy: Policy, autos: Sequence[Snapshot], now: float, since: int) -> str | None:
    """Why an automatic snapshot is due now: "schedule", "written", or None. ``since``: what
    :func:`written_since` says."""
    if due(policy, autos, now):
        return "schedule"
    if policy.after_written and since >= policy.after_written:
        if not autos or now - max(s.created for s in autos) >= policy.min_interval:
            return "written"
    return None


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
