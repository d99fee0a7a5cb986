"""Governance in process, on the injected clock: TOTP admins (enrolment, wrong, replayed and
drifted codes, the lockout), the one guard in PoolService.dispatch, approval by a second admin
(self-approval refused, expiry), the audit log's admin and approved_by fields, and compliance
locks on backup jobs, policies and snapshots against expire, delete, pruning and a clock moved
back. The CLI through a real daemon is in test_governance_cli.py."""

from __future__ import annotations

import json
import os
import stat
import threading

import pyotp
import pytest
from poolkit import MiB, make_pool

from vstor.backup.engine import BackupEngine
from vstor.backup.governance.admins import LOCKOUT, MAX_FAILURES, STEP, AdminStore
from vstor.backup.governance.rules import GUARDED, parse_until, rule_for
from vstor.clock import ManualClock
from vstor.control.service import PoolService
from vstor.errors import CorruptData, NotFound, Refused, UsageError
from vstor.media.manager import MediaManager
from vstor.store.backend.statefiles import local_files
from vstor.store.catalog import compliance, snapshots
from vstor.store.catalog.groups import Policy
from vstor.store.store import Store

DAY = 86400.0


class Gov:
    """A pool with a group g of one volume, a tape library, and a PoolService on one ManualClock."""

    def __init__(self, tmp_path) -> None:
        self.pool = make_pool(tmp_path)
        self.clock = ManualClock()
        self.store = Store.open(self.pool, clock=self.clock)
        self.media = MediaManager(self.pool, self.store.media_key)
        self.media.create_library("lib", "tape", 4, 1, 1)
        self.media.create_media("lib", ["VT0001L9", "VT0002L9"], capacity=8 * MiB)
        self.svc = PoolService(self.store, media=self.media,
                               backup=BackupEngine(self.store, self.media, clock=self.clock))
        self.store.create_volume("v", 4 * MiB)
        self.store.event(lambda st: st.catalog.make_group_create(st.table, "g", ["v"], 0.0))
        self.secrets: dict[str, str] = {}

    def code(self, name: str) -> str:
        """A fresh code: the clock moves on one TOTP step first (a used code is never accepted again)."""
        self.clock.advance(STEP)
        return pyotp.TOTP(self.secrets[name]).at(self.clock.time())

    def auth(self, name: str) -> dict:
        return {"as": name, "otp": self.code(name)}

    def call(self, op: str, auth: dict | None = None, **args: object) -> object:
        return self.svc.dispatch(op, args | ({"auth": auth} if auth else {}))

    def enroll(self, name: str, by: str | None = None) -> dict:
        r = self.call("admin.enroll", self.auth(by) if by else None, name=name)
        self.secrets[name] = r["secret"]
        self.clock.advance(STEP)  # the next code is a fresh one
        return r

    def policy(self, name: str = "p", auth: dict | None = None) -> dict:
        return self.call("backup.policy.create", auth, name=name, source="g", library="lib",
                         media=["VT0001L9", "VT0002L9"], retention="7d")

    def done_job(self, policy: str = "p") -> int:
        """A finished full job in the catalog (no tape written: retention only reads the catalog)."""
        cat = self.svc.backup.catalog
        now = self.clock.time()
        job = cat.new_job(policy, "full", "g", None, None, now + 7 * DAY)
        cat.set_job(job, status="done", started=now, ended=now)
        return job

    def audit(self) -> list[dict]:
        return self.svc.backup.audit.entries()

    def close(self) -> None:
        self.svc.backup.close()
        self.media.close()
        self.store.close()


@pytest.fixture
def gov(tmp_path):
    g = Gov(tmp_path)
    yield g
    g.close()


# -- TOTP -------------------------------------------------------------------------------------
def test_totp_drift_replay_and_lockout(tmp_path):
    clock = ManualClock()
    admins = AdminStore(local_files(str(tmp_path)), clock)
    r = admins.enroll("alice", "root")
    assert r["uri"].startswith("otpauth://totp/vstor:alice?secret=") and "issuer=vstor" in r["uri"]
    assert stat.S_IMODE(os.stat(tmp_path / "admins.json").st_mode) == 0o600
    assert "secret" not in json.dumps(admins.listing())
    totp = pyotp.TOTP(r["secret"])
    now = clock.time()
    with pytest.raises(Refused, match="wrong one-time code"):
        admins.verify("alice", totp.at(now - 2 * STEP))  # two steps of drift: too far
    admins.verify("alice", totp.at(now - STEP))  # one step: accepted
    admins.verify("alice", totp.at(now))
    with pytest.raises(Refused, match="already used"):
        admins.verify("alice", totp.at(now))  # replayed within its window
    with pytest.raises(Refused, match="already used"):
        admins.verify("alice", totp.at(now - STEP))  # an older code after a newer one
    admins.verify("alice", totp.at(now + STEP))
    with pytest.raises(Refused, match="6 digits"):
        admins.verify("alice", "12345x")
    with pytest.raises(Refused, match="not an enrolled admin"):
        admins.verify("mallory", totp.at(now))
    # the lockout: MAX_FAILURES wrong codes lock the name, even for a right code, until LOCKOUT passes
    clock.advance(10 * STEP)
    admins.verify("alice", totp.at(clock.time()))  # a good code resets the count (the malformed one counted)
    clock.advance(STEP)
    bad = f"{(int(totp.at(clock.time())) + 1) % 1000000:06d}"
    for _ in range(MAX_FAILURES - 1):
        with pytest.raises(Refused, match="wrong"):
            admins.verify("alice", bad)
    with pytest.raises(Refused, match="locked for 15 minutes"):
        admins.verify("alice", bad)
    with pytest.raises(Refused, match="is locked for"):
        admins.verify("alice", totp.at(clock.time()))
    clock.advance(LOCKOUT)
    admins.verify("alice", totp.at(clock.time()))
    # one code sent twice at the same moment (two connections, two AdminStore objects): accepted once
    clock.advance(STEP)
    code, results = totp.at(clock.time()), []

    def use() -> None:
        try:
            AdminStore(local_files(str(tmp_path)), clock).verify("alice", code)
            results.append("ok")
        except Refused:
            results.append("refused")

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] + ["refused"] * 7
    # a damaged file refuses everything rather than letting anyone through
    with open(tmp_path / "admins.json", "r+b") as f:
        f.seek(40)
        f.write(b"#")
    with pytest.raises(CorruptData, match="damaged"):
        admins.verify("alice", totp.at(clock.time() + STEP))


# -- the guard --------------------------------------------------------------------------------
def test_a_change_needs_an_admins_code_once_one_is_enrolled(gov):
    gov.policy("before")  # nobody enrolled: not guarded
    r = gov.enroll("alice")  # the bootstrap: free
    assert r["uri"].startswith("otpauth://")
    with pytest.raises(Refused, match="--as NAME --otp CODE"):
        gov.policy("p")
    with pytest.raises(Refused, match="--as NAME --otp CODE"):  # another spelling of the same op
        gov.svc.dispatch("backup.policy_create", {"name": "p", "source": "g", "library": "lib", "media": ["VT0001L9"]})
    with pytest.raises(Refused, match="wrong one-time code"):
        gov.policy("p", {"as": "alice", "otp": f"{(int(gov.code('alice')) + 1) % 1000000:06d}"})
    auth = gov.auth("alice")
    gov.policy("p", auth)
    with pytest.raises(Refused, match="already used"):
        gov.call("key.rotate", auth)  # the same code again
    assert [p["name"] for p in gov.call("backup.policy.list")] == ["before", "p"]  # reading is not guarded
    # a second admin needs an existing admin's code
    with pytest.raises(Refused, match="--as NAME"):
        gov.call("admin.enroll", name="bob")
    with pytest.raises(Refused, match="last enrolled admin"):
        gov.call("admin.remove", gov.auth("alice"), name="alice")
    gov.enroll("bob", by="alice")
    listing = gov.call("admin.list")
    assert [a["name"] for a in listing["admins"]] == ["alice", "bob"]
    assert listing["admins"][1]["enrolled_by"] == "alice" and "secret" not in json.dumps(listing)
    created = [e for e in gov.audit() if e["action"] == "backup.policy.create"]
    assert "admin" not in created[0] and created[1]["admin"] == "alice"
    assert [e.get("admin") for e in gov.audit() if e["action"] == "admin.enroll"] == [None, "alice"]  # bootstrap, bob
    assert gov.call("audit.verify")["intact"]


def test_every_guarded_op_exists_and_is_refused_without_a_code(gov):
    gov.enroll("alice")
    for op, rule in GUARDED.items():
        assert hasattr(gov.svc, "op_" + op.replace(".", "_")), op
        assert rule_for(op.replace(".", "_")) is rule
        with pytest.raises(Refused, match="--as NAME --otp CODE"):
            gov.svc.dispatch(op, {"schedule": "x"} if op == "backup.drill" else {})
    gov.call("backup.expire", dry_run=True)  # a dry run changes nothing: no code needed
    gov.policy("p", gov.auth("alice"))
    with pytest.raises(Refused, match="--as NAME --otp CODE"):
        gov.call("backup.drill", policy="p", schedule="0 4 * * SUN")  # defining a drill is a change


# -- approval ---------------------------------------------------------------------------------
def test_approval_by_a_second_admin(gov):
    gov.enroll("alice")
    with pytest.raises(UsageError, match="at least two admins"):
        gov.call("admin.require_approval", gov.auth("alice"), on=True)
    gov.clock.advance(STEP)
    gov.enroll("bob", by="alice")
    gov.call("admin.require_approval", gov.auth("alice"), on=True)
    gov.clock.advance(STEP)
    gov.policy("p", gov.auth("bob"))  # not destructive: runs at once
    gov.clock.advance(STEP)
    r = gov.call("backup.policy.delete", gov.auth("alice"), name="p")
    req = r["approval_request"]
    assert req["requester"] == "alice" and req["op"] == "backup.policy.delete" and req["status"] == "pending"
    assert gov.call("backup.policy.show", name="p")["name"] == "p"  # not run yet
    assert [x["id"] for x in gov.call("admin.requests")] == [req["id"]]
    gov.clock.advance(STEP)
    with pytest.raises(Refused, match="cannot approve it"):
        gov.call("admin.approve", request=req["id"], admin="alice", otp=gov.code("alice"))
    with pytest.raises(Refused, match="wrong"):
        gov.call("admin.approve", request=req["id"], admin="bob", otp=f"{(int(gov.code('bob')) + 1) % 1000000:06d}")
    out = gov.call("admin.approve", request=req["id"], admin="bob", otp=gov.code("bob"))
    assert out["request"]["approved_by"] == "bob" and out["result"]["name"] == "p"
    with pytest.raises(NotFound):
        gov.call("backup.policy.show", name="p")
    deleted = [e for e in gov.audit() if e["action"] == "backup.policy.delete"]
    assert len(deleted) == 1 and deleted[0]["admin"] == "alice" and deleted[0]["approved_by"] == "bob"
    asked = [e for e in gov.audit() if e["action"] == "approval.request"]
    assert asked[0]["admin"] == "alice" and asked[0]["details"]["op"] == "backup.policy.delete"
    assert gov.call("audit.verify") == gov.call("audit.verify") | {"intact": True, "problems": []}
    with pytest.raises(Refused, match="already approved"):
        gov.call("admin.approve", request=req["id"], admin="bob", otp=gov.code("bob"))

    # an expired request cannot be approved, even with the system clock moved back
    gov.clock.advance(2 * STEP)
    req2 = gov.call("snapshot.delete", gov.auth("bob"), owner="g", name="nope")["approval_request"]
    gov.clock.advance(2 * 3600)
    compliance.checkpoint(gov.store.files, gov.clock)  # the daemon's maintenance loop, every tick
    gov.clock.now -= 2 * 3600  # the system clock set back: the compliance clock is not
    with pytest.raises(Refused, match="expired"):
        gov.call("admin.approve", request=req2["id"], admin="alice", otp=gov.code("alice"))
    assert gov.call("admin.requests") == []

    # turning approval off is itself destructive
    gov.clock.advance(3 * STEP)
    req3 = gov.call("admin.require_approval", gov.auth("alice"), on=False)["approval_request"]
    assert gov.call("admin.list")["require_approval"] is True
    gov.call("admin.approve", request=req3["id"], admin="bob", otp=gov.code("bob"))
    assert gov.call("admin.list")["require_approval"] is False
    assert gov.call("audit.verify")["intact"]


# -- compliance locks -------------------------------------------------------------------------
def test_a_locked_job_survives_expire_and_a_clock_set_back(gov):
    gov.policy("p")
    j1 = gov.done_job()
    gov.enroll("alice")
    lock = gov.call("backup.lock", gov.auth("alice"), target=str(j1), until="30d")
    t0 = gov.clock.time()
    assert lock["until"] == t0 + 30 * DAY
    j2 = gov.done_job()
    gov.clock.advance(DAY)
    j3 = gov.done_job()  # the newest chain: kept anyway
    gov.clock.advance(8 * DAY)
    out = gov.call("backup.expire", gov.auth("alice"))
    assert out["expire"] == [j2] and (j1, "under a compliance lock until " +
                                      compliance.show_time(t0 + 30 * DAY)) in [tuple(k) for k in out["kept"]]
    assert gov.svc.backup.catalog.job(j1)["status"] == "done"
    assert [e for e in gov.audit() if e["action"] == "backup.lock"][0]["admin"] == "alice"
    # the system clock set back 20 days: compliance time stays at the high mark, the job stays
    # locked and "for 25 days" counts from the high mark (a set-back clock also fails every TOTP
    # code from the admins' phones, so only unguarded requests are made until it is put right)
    high = gov.clock.time()
    gov.clock.now -= 20 * DAY
    assert gov.call("lock.list")["compliance_time"] == high
    assert gov.call("lock.list")["locks"][0] == {"key": f"job:{j1}", "until": t0 + 30 * DAY, "set": t0,
                                                 "by": lock["by"], "what": f"backup job {j1}", "active": True}
    cc, locks = compliance.for_pool(gov.store.files, gov.clock)
    with pytest.raises(Refused, match="never shortened"):
        locks.set(f"job:{j1}", parse_until("10d", cc.now()), cc.now(), "x", "job")  # high + 10d < t0 + 30d
    assert locks.set(f"job:{j1}", parse_until("25d", cc.now()), cc.now(), "x", "job")["until"] == high + 25 * DAY
    gov.clock.now = high
    with pytest.raises(Refused, match="never shortened"):
        gov.call("backup.lock", gov.auth("alice"), target=str(j1), until="2023-12-10")
    # a policy lock holds every job of it, new ones too, and the policy itself
    gov.clock.advance(2 * STEP)
    gov.call("backup.lock", gov.auth("alice"), target="p", until="2030-01-01")
    gov.clock.advance(2 * STEP)
    with pytest.raises(Refused, match="compliance lock until 2030-01-01"):
        gov.call("backup.policy.delete", gov.auth("alice"), name="p")
    j4 = gov.done_job()
    gov.clock.now = 1_900_000_000.0  # 2030-03: past every lock
    gov.done_job()
    out = gov.call("backup.expire", gov.auth("alice"))
    assert {j1, j3, j4} <= set(out["expire"])


def test_a_locked_snapshot_survives_delete_and_pruning(gov):
    gov.enroll("alice")
    s = snapshots.create(gov.store, "g", "keep")
    gov.call("snapshot.lock", gov.auth("alice"), owner="g", name="keep", until="2d")
    with pytest.raises(Refused, match="snapshot g/keep is under a compliance lock"):
        gov.call("snapshot.delete", gov.auth("alice"), owner="g", name="keep")
    with pytest.raises(Refused, match="compliance lock"):
        snapshots.delete(gov.store, "g", "keep")  # the store's own path, below the control ops
    with pytest.raises(Refused, match="never shortened"):
        gov.call("snapshot.lock", gov.auth("alice"), owner="g", name="keep", until="1d")
    # automatic snapshots: keep_last 1 prunes all but the newest, except the locked one
    gov.store.event(lambda st: st.catalog.make_policy(st.table, "g", Policy(3600, 1, 0)))
    autos = []
    for _ in range(3):
        snapshots.run_policies(gov.store)
        autos = [x["name"] for x in snapshots.listing(gov.store, "g") if x["auto"]]
        gov.clock.advance(3600)
    first = sorted(autos)[0]
    gov.clock.advance(2 * STEP)
    gov.call("snapshot.lock", gov.auth("alice"), owner="g", name=first, until="1d")
    snapshots.run_policies(gov.store)
    names = [x["name"] for x in snapshots.listing(gov.store, "g")]
    assert "keep" in names and first in names and len([n for n in names if n != "keep"]) == 2, names
    # past its date the lock is gone (pruned); the compliance clock keeps the high mark the
    # maintenance pass saw, so the system clock set back afterwards does not revive the lock on "keep"
    gov.clock.advance(3 * DAY)
    snapshots.run_policies(gov.store)  # the periodic checkpoint of the compliance clock
    assert first not in [x["name"] for x in snapshots.listing(gov.store, "g")]
    gov.clock.now -= 3 * DAY
    assert gov.call("snapshot.delete", gov.auth("alice"), owner="g", name="keep")["id"] == s["id"]
    # written before the change (as service.AUDITED): the refused attempt is on record too
    assert [(e["details"]["name"], e["admin"]) for e in gov.audit() if e["action"] == "snapshot.delete"] == [
        ("keep", "alice"), ("keep", "alice")]
    assert stat.S_IMODE(os.stat(os.path.join(gov.pool, "meta", compliance.LOCKS_FILE)).st_mode) == 0o600


def test_lock_dates_and_a_damaged_lock_file(gov):
    now = gov.clock.time()
    assert parse_until("2030-01-01", now) == 1893456000.0
    assert parse_until("2030-01-01T12:30Z", now) == 1893456000.0 + 12.5 * 3600
    assert parse_until("7y", now) == now + 7 * 365 * DAY
    with pytest.raises(UsageError, match="invalid --until"):
        parse_until("soon", now)
    snapshots.create(gov.store, "g", "s")
    with pytest.raises(UsageError, match="not in the future"):
        gov.call("snapshot.lock", owner="g", name="s", until="2001-01-01")
    gov.call("snapshot.lock", owner="g", name="s", until="1d")  # no admin yet: not guarded
    path = os.path.join(gov.pool, "meta", compliance.LOCKS_FILE)
    with open(path, "rb") as f:
        doc = f.read()
    with open(path, "wb") as f:
        f.write(doc.replace(b'"until": ', b'"until": 1'))  # an edited date fails the checksum

    with pytest.raises(CorruptData, match="nothing they may protect can be deleted"):
        snapshots.delete(gov.store, "g", "s")
