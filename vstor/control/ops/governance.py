"""Governance over the control socket (mixed into PoolService): the guard every control request
passes (``_governed``), admin enrolment, approval requests and compliance locks.

The guard strips the request's ``auth`` ({"as": NAME, "otp": CODE}, sent by the CLI's --as and
--otp), asks vstor/backup/governance/rules.py what to do, and then runs the op as that admin (the audit
entries written meanwhile carry "admin"), or files a pending approval request and returns
{"approval_request": ...} instead. ``admin.approve`` runs an approved request with "admin" = the
requester and "approved_by" = the approver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from vstor.backup.audit import AUTHORITY, AuditLog, current_actor
from vstor.backup.governance.admins import AdminStore
from vstor.backup.governance.approvals import Approvals
from vstor.backup.governance.rules import decide, parse_until, rule_for
from vstor.errors import Refused, UsageError
from vstor.store.catalog import compliance, snapshots
from vstor.store.store import Store

__all__ = ["GovernanceOps"]


@contextmanager
def _authority(admin: str | None, approved_by: str | None = None) -> Iterator[None]:
    token = AUTHORITY.set({"admin": admin, "approved_by": approved_by} if admin else None)
    try:
        yield
    finally:
        AUTHORITY.reset(token)


class GovernanceOps:
    # Provided by PoolService (and BackupOps).
    store: Store
    backup: Any
    _execute: Callable[..., Any]  # run an op once let through (AUDITED entries, progress)
    _backup: Callable[[], Any]

    # -- the state ---------------------------------------------------------------------------
    def _admins(self) -> AdminStore:
        return AdminStore(self.store.files.sub("backup"), self.store.clock)

    def _approvals(self) -> Approvals:
        return Approvals(self.store.files.sub("backup"), self._compliance()[0])

    def _compliance(self) -> tuple[compliance.ComplianceClock, compliance.Locks]:
        return compliance.for_pool(self.store.files, self.store.clock)

    def _audit(self) -> AuditLog:
        if self.backup is not None:
            return self.backup.audit
        return AuditLog(self.store.files.sub("backup"), self.store.clock)

    # -- the guard ---------------------------------------------------------------------------
    def _governed(self, op: str, args: dict, progress: Any = None) -> Any:
        auth = args.pop("auth", None)
        decision = decide(op, args, auth, self._admins())
        if decision.approval:
            req = self._approvals().create(op, args, decision.admin or "")
            with _authority(decision.admin):
                self._audit().append(current_actor(), "approval.request", {"id": req["id"], "op": op, "args": args})
            return {"approval_request": req}
        with _authority(decision.admin):
            return self._run_guarded(op, args, decision.guarded, progress)

    def _run_guarded(self, op: str, args: dict, guarded: bool, progress: Any = None) -> Any:
        rule = rule_for(op)
        if guarded and rule is not None and not rule.audited:  # written before the change, as service.AUDITED
            self._audit().append(current_actor(), op, args)
        return self._execute(op, args, progress)

    # -- admins ------------------------------------------------------------------------------
    def op_admin_enroll(self, name: str) -> dict:
        by = (AUTHORITY.get() or {}).get("admin") or f"{current_actor()} (first admin)"
        return self._admins().enroll(name, by)

    def op_admin_list(self) -> dict:
        admins = self._admins()
        return {"admins": admins.listing(), "require_approval": admins.require_approval()}

    def op_admin_remove(self, name: str) -> dict:
        admins = self._admins()
        if admins.names() == [name]:
            raise Refused(f"{name!r} is the last enrolled admin: removing it would switch governance off, which "
                          "vstor does not do; enrol another admin first")
        if admins.require_approval() and len(admins.names()) <= 2:
            raise Refused("approval is required and needs two enrolled admins: enrol another admin, or turn "
                          "approval off, before removing one")
        admins.remove(name)
        return {"name": name, "removed": True}

    def op_admin_require_approval(self, on: bool) -> dict:
        admins = self._admins()
        if on and len(admins.names()) < 2:
            raise UsageError("approval needs a second admin to approve: enrol at least two admins first "
                             "('vstor admin enroll NAME')")
        admins.set_require_approval(on)
        return {"require_approval": bool(on)}

    def op_admin_requests(self, all: bool = False) -> list[dict]:  # noqa: A002 - the wire name
        return self._approvals().listing(all)

    def op_admin_approve(self, request: int, admin: str, otp: str) -> dict:
        """Approve request ``request`` as ``admin`` (with their code), then run it."""
        admins = self._admins()
        approvals = self._approvals()
        pending = {r["id"]: r for r in approvals.listing()}
        if int(request) in pending and pending[int(request)]["requester"] == admin:
            raise Refused(f"admin {admin!r} made request {request} and cannot approve it: another enrolled admin "
                          "must approve it")  # before the code is spent
        admins.verify(admin, otp)
        req = approvals.approve(int(request), admin)
        with _authority(req["requester"], admin):
            self._audit().append(current_actor(), "approval.approve", {"id": req["id"], "op": req["op"]})
            result = self._run_guarded(req["op"], dict(req["args"]), True)
        return {"request": req, "result": result}

    # -- compliance locks --------------------------------------------------------------------
    def op_backup_lock(self, target: str, until: str) -> dict:
        """Lock a job (a number) or a policy (a name) until a date (compliance time)."""
        cat = self._backup().catalog
        with compliance.GUARD:
            cc, locks = self._compliance()
            now = cc.now()
            when = parse_until(until, now)
            if str(target).isdigit():
                job = cat.job(int(target))
                return locks.set(compliance.job_key(job["id"]), when, now, current_actor(), f"backup job {job['id']}")
            cat.policy(target)  # NotFound names the list command
            return locks.set(compliance.policy_key(target), when, now, current_actor(), f"backup policy {target!r}")

    def op_snapshot_lock(self, owner: str, name: str, until: str) -> dict:
        with compliance.GUARD:
            cc, locks = self._compliance()
            now = cc.now()
            snap = snapshots.get(self.store, owner, name)
            return locks.set(compliance.snapshot_key(snap.id), parse_until(until, now), now, current_actor(),
                             f"snapshot {owner}/{name}")

    def op_lock_list(self) -> dict:
        cc, locks = self._compliance()
        now = cc.now()
        rows = [{"key": k} | v | {"active": v["until"] > now} for k, v in sorted(locks.all().items())]
        return {"compliance_time": now, "wall_time": self.store.clock.time(), "locks": rows}
