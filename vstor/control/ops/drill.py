"""Control operations of restore drills (mixed into PoolService next to BackupOps).

``backup.drill`` defines (``schedule``, ``check``, ``check_timeout``) and/or runs (``now``) a drill;
``backup.drill.list`` / ``backup.drill.remove`` manage definitions; ``backup.drills`` is the
history. Defining and removing are configuration changes: the drill runner writes them to the
audit log.
"""

from __future__ import annotations

from typing import Any

from vstor.backup.drill.report import drill_report
from vstor.backup.drill.runner import latest_restorable
from vstor.errors import VstorError
from vstor.units import parse_duration

__all__ = ["DrillOps", "policy_sizes"]


def policy_sizes(engine: Any) -> dict[str, int]:
    """Each policy's current size: the bytes of its latest restorable chain (what a full restore reads)."""
    out = {}
    for p in engine.catalog.policies():
        try:
            out[p["name"]] = sum(j["bytes"] or 0 for j in engine.catalog.chain(latest_restorable(engine.catalog,
                                                                                               p["name"])))
        except VstorError:
            continue
    return out


class DrillOps:
    _backup: Any  # BackupOps._backup, through PoolService

    def op_backup_drill(self, policy: str, schedule: str | None = None, check: str | None = None,
                        check_timeout: str | None = None, now: bool = False) -> dict:
        """Define the drill of ``policy`` if any of schedule/check/check_timeout is given; run it now
        when ``now`` is set or nothing is defined by this call."""
        runner = self._backup().drills
        out: dict = {}
        if schedule or check or check_timeout:
            secs = float(parse_duration(check_timeout, "--check-timeout")) if check_timeout else None
            out["definition"] = runner.define(policy, schedule, check, secs)
        if now or not out:
            out["drill"] = runner.run(policy)
        return out

    def op_backup_drill_list(self) -> list[dict]:
        return self._backup().drills.definitions()

    def op_backup_drill_remove(self, policy: str) -> dict:
        return self._backup().drills.remove(policy)

    def op_backup_drills(self, policy: str | None = None) -> list[dict]:
        return self._backup().drills.records.drills(policy)

    def drill_section(self, days: int) -> dict:
        eng = self._backup()
        return drill_report(eng.drills.records.drills(), policy_sizes(eng), eng.clock.time(), days)
