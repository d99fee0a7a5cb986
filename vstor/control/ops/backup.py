"""Control operations of the backup engine, the audit log and backup keys (mixed into
PoolService).

With a running daemon they act on its BackupEngine (whose scheduler runs the policies);
offline, on one opened for the command under the pool lock. Runs and restores report
progress, so the CLI waits for them without a time limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vstor.backup.audit import current_actor
from vstor.backup.engine import BackupEngine
from vstor.backup.governance.rules import job_locks
from vstor.backup.rules.report import build_report
from vstor.backup.rules.retention import apply_expiry, plan_expiry
from vstor.errors import UsageError
from vstor.media.manager import MediaManager, parse_range
from vstor.store.adminops import Progress
from vstor.store.catalog import compliance
from vstor.store.store import Store
from vstor.units import parse_duration


class BackupOps:
    # Provided by PoolService (and MediaOps).
    store: Store
    backup: Any
    mount: str | None
    _media: Callable[[], MediaManager]
    drill_section: Callable[[int], dict]  # DrillOps

    def _backup(self) -> BackupEngine:
        if self.backup is None:
            self.backup = BackupEngine(self.store, self._media())
        return self.backup

    # -- policies -------------------------------------------------------------------------------
    def op_backup_policy_create(self, name: str, source: str, library: str, media: list[str],
                                schedule: str | None = None, level: str = "full", full_every: str | None = None,
                                retention: str = "30d", encrypt: bool = False, freeze: list[str] | None = None,
                                verify: bool = True, pre: str | None = None, post: str | None = None,
                                hook_timeout: str | None = None, retries: int = 0,
                                retry_delay: str | None = None) -> dict:
        codes = [c for spec in media for c in (parse_range(spec) if "-" in spec else [spec])]
        return self._backup().create_policy(name=name, source=source, library=library, media=codes,
                                            schedule=schedule, level=level, full_every=full_every,
                                            retention=retention, encrypt=encrypt, freeze=freeze, verify=verify,
                                            pre=pre, post=post, hook_timeout=hook_timeout, retries=retries,
                                            retry_delay=retry_delay)

    def op_backup_policy_list(self) -> list[dict]:
        eng = self._backup()
        return [p | {"next_run": eng.scheduler.next_for(p)} for p in eng.catalog.policies()]

    def op_backup_policy_show(self, name: str) -> dict:
        eng = self._backup()
        p = eng.catalog.policy(name)
        return p | {"next_run": eng.scheduler.next_for(p), "jobs": eng.catalog.jobs(name)[:10]}

    def op_backup_policy_delete(self, name: str) -> dict:
        return self._backup().delete_policy(name)

    # -- jobs -----------------------------------------------------------------------------------
    def op_backup_run(self, policy: str, level: str | None = None, wait: bool = False,
                      progress: Progress = None) -> dict:
        eng = self._backup()
        if wait or self.mount is None:  # offline: the command's process is the one that runs it
            return eng.run(policy, level, progress)
        return eng.catalog.job(eng.start(policy, level))

    def op_backup_jobs(self, policy: str | None = None) -> list[dict]:
        cat = self._backup().catalog
        return [cat.job(j["id"]) for j in cat.jobs(policy)]  # with their parts: the cartridges they went to

    def op_backup_show(self, job: int) -> dict:
        eng = self._backup()
        out = eng.catalog.job(job)
        try:
            out["chain"] = [j["id"] for j in eng.catalog.chain(job)]
        except Exception as e:  # noqa: BLE001 - shown, not raised: the job itself is still worth seeing
            out["chain_error"] = str(e)
        return out

    def op_backup_verify(self, job: int) -> dict:
        eng = self._backup()
        if eng.catalog.job(job)["source"].startswith("client:"):
            return eng.clients.verify(job)
        return eng.verify(job)

    def op_backup_restore(self, job: int, to: str | None = None, progress: Progress = None,
                          to_client: str | None = None, target: str | None = None, files: str | None = None) -> dict:
        done = self.client_restore(job, to, to_client, target, files, progress)  # type: ignore[attr-defined]
        if done is not None:
            return done
        if to is None or to_client or files:
            raise UsageError(f"backup job {job} is of volumes: restore it with --to NAME (--to-client and --files "
                             "are for client jobs)")
        return self._backup().restore(job, to, progress)

    def op_backup_expire(self, dry_run: bool = False) -> dict:
        eng = self._backup()
        eng.refresh_locations()
        with compliance.GUARD:  # no lock set between the plan and its application
            ctime, locks = compliance.for_pool(self.store.files, eng.clock)
            plan = plan_expiry(eng.catalog, eng.clock.time(), job_locks(eng.catalog.jobs(), locks.all(), ctime.now()))
            out = {"expire": plan.expire, "recycle": plan.recycle, "kept": plan.kept, "refused": plan.refused,
                   "dry_run": dry_run}
            if not dry_run and (plan.expire or plan.recycle):
                eng.audit.append(current_actor(), "backup.expire", out)
                apply_expiry(eng.catalog, plan)
        return out

    def op_backup_media(self) -> list[dict]:
        eng = self._backup()
        eng.refresh_locations()
        return eng.catalog.media_list()

    def op_backup_catalog_rebuild(self, library: str, media: list[str] | None = None) -> dict:
        eng = self._backup()
        eng.audit.append(current_actor(), "backup.catalog.rebuild", {"library": library, "media": media or []})
        return eng.rebuild(library, media or None)

    def op_backup_report(self, days: int = 30) -> dict:
        eng = self._backup()
        report = build_report(eng.catalog.jobs(), eng.catalog.restores(), eng.clock.time(), days)
        return report | {"drills": self.drill_section(days)}  # DrillOps

    # -- audit and keys ---------------------------------------------------------------------------
    def op_audit_log(self) -> list[dict]:
        return self._backup().audit.entries()

    def op_audit_verify(self) -> dict:
        eng = self._backup()
        problems = eng.audit.verify()
        return {"intact": not problems, "problems": problems, "entries": len(eng.audit.entries()),
                "head": eng.audit.head()}

    def op_key_rotate(self, every: str | None = None) -> dict:
        eng = self._backup()
        new = eng.keys.rotate()
        details: dict[str, Any] = {"key_id": new}
        if every:
            details["every"] = parse_duration(every, "--every")
            eng.set_setting("key_rotate_every", details["every"])
        eng.audit.append(current_actor(), "key.rotate", details)
        return details | {"keys": eng.keys.listing()}

    def op_key_list(self) -> list[dict]:
        return self._backup().keys.listing()
