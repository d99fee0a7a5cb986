"""Pending approval requests (NetApp multi-admin verification), POOL/backup/approvals.json.

With approval required, a destructive control request by admin A is not run: it becomes a
request {id, op, args, requester, created, expires, status}. It runs when a *different* enrolled
admin approves it (with their own one-time code) before it expires (``EXPIRY``, 1 h, as ONTAP's
default). States: ``pending`` -> ``approved`` (then run) or ``expired``. The requester never
counts as an approver. Ids are never reused. Finished requests beyond the newest ``KEEP`` are
dropped from the file (the audit log keeps them all).

The file: a pool state file (vstor/store/backend/statefiles.py), sealed JSON (vstor/checkedjson.py),
mode 0600 on a local pool, atomic replace, ``checksum`` = sha256 hex of the canonical JSON
without it. Pure logic; the caller serializes calls.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from vstor import checkedjson
from vstor.clock import WallClock
from vstor.errors import NotFound, Refused

if TYPE_CHECKING:
    from vstor.store.backend.statefiles import PoolFiles

__all__ = ["APPROVALS_FILE", "EXPIRY", "KEEP", "VERSION", "Approvals"]

VERSION = 1
APPROVALS_FILE = "approvals.json"
EXPIRY = 3600.0
KEEP = 200

_LOCK = threading.Lock()  # serializes read-check-write of the file within the process (a code is
# accepted once, a request approved once, even by two requests at the same moment)


class Approvals:
    def __init__(self, files: PoolFiles, clock: WallClock) -> None:
        """``files``: the pool's ``backup`` state files (the store's ``files.sub("backup")``)."""
        self.files, self.clock = files, clock
        self._lock = _LOCK  # one for every instance: the control server makes one per request

    def _load(self) -> dict:
        return checkedjson.load(self.files, APPROVALS_FILE, {"next_id": 1, "requests": []}, VERSION,
                                "restore it from a copy, or remove it (pending requests are then lost and "
                                "must be made again)")

    def _save(self, doc: dict) -> None:
        done = [r for r in doc["requests"] if r["status"] != "pending"]
        drop = {r["id"] for r in done[:-KEEP]} if len(done) > KEEP else set()
        doc["requests"] = [r for r in doc["requests"] if r["id"] not in drop]
        checkedjson.save(self.files, APPROVALS_FILE, doc, VERSION)

    def _expire(self, doc: dict, now: float) -> None:
        for r in doc["requests"]:
            if r["status"] == "pending" and r["expires"] <= now:
                r["status"] = "expired"

    def create(self, op: str, args: dict, requester: str) -> dict:
        now = self.clock.time()
        with self._lock:
            doc = self._load()
            self._expire(doc, now)
            req = {"id": doc["next_id"], "op": op, "args": args, "requester": requester, "created": now,
                   "expires": now + EXPIRY, "status": "pending", "approved_by": None, "approved": None}
            doc["next_id"] += 1
            doc["requests"].append(req)
            self._save(doc)
            return dict(req)

    def listing(self, all_: bool = False) -> list[dict]:
        doc = self._load()
        self._expire(doc, self.clock.time())
        return [r for r in doc["requests"] if all_ or r["status"] == "pending"]

    def approve(self, rid: int, approver: str) -> dict:
        """Mark request ``rid`` approved by ``approver`` (already authenticated); returns it.
        Refused for the requester, for an expired or finished request."""
        now = self.clock.time()
        with self._lock:
            doc = self._load()
            self._expire(doc, now)
            req = next((r for r in doc["requests"] if r["id"] == int(rid)), None)
            if req is None:
                raise NotFound(f"no approval request {rid} (see 'vstor admin requests')")
            if req["status"] == "expired":
                self._save(doc)
                raise Refused(f"approval request {rid} expired at its deadline; the requester must ask again")
            if req["status"] != "pending":
                raise Refused(f"approval request {rid} is already {req['status']}")
            if req["requester"] == approver:
                raise Refused(f"admin {approver!r} made request {rid} and cannot approve it: another enrolled admin "
                              "must approve it")
            req.update(status="approved", approved_by=approver, approved=now)
            self._save(doc)
            return dict(req)
