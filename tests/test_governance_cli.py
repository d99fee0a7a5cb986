"""Governance end to end through the CLI and a running daemon: enrolment prints an otpauth:// URI
and a terminal QR code, a guarded change is refused without a code, with a wrong one and with a
replayed one (one 'vstor: error:' line, exit 15), a compliance lock is set, and with approval on
a destructive request waits (exit 16) for a second admin. The daemon runs on the real clock, so
each admin uses two codes: the current step's and the next one (both inside the accepted drift)."""

from __future__ import annotations

import json
import os
import stat
import time
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest
from harness import one_error_line

pytestmark = pytest.mark.root


def _uri(out: str) -> str:
    return next(w for line in out.splitlines() for w in line.split() if w.startswith("otpauth://"))


def test_enrol_refuse_lock_and_wait_for_approval_through_the_daemon(array):
    arr = array
    arr.create("v", "16M")
    arr.vstor("snapshot", "create", "v", "--name", "s1")

    r = arr.vstor("admin", "enroll", "alice")
    alice = pyotp.TOTP(parse_qs(urlparse(_uri(r.stdout)).query)["secret"][0])
    assert _uri(r.stdout).startswith("otpauth://totp/vstor:alice?secret=")
    assert "█" in r.stdout or "▀" in r.stdout, r.stdout  # the QR code, in half blocks (stdout is no tty)
    admins = os.path.join(arr.pool, "backup", "admins.json")
    assert stat.S_IMODE(os.stat(admins).st_mode) == 0o600

    r = arr.vstor("snapshot", "delete", "v", "s1", check=False)
    assert "--as NAME --otp CODE" in one_error_line(r, "no code") and r.returncode == 15
    wrong = f"{(int(alice.now()) + 1) % 1000000:06d}"
    r = arr.vstor("snapshot", "lock", "v/s1", "--until", "1d", "--as", "alice", "--otp", wrong, check=False)
    assert "wrong one-time code" in one_error_line(r, "wrong code") and r.returncode == 15

    a0 = alice.now()
    r = arr.vstor("admin", "enroll", "bob", "--as", "alice", "--otp", a0)
    bob = pyotp.TOTP(parse_qs(urlparse(_uri(r.stdout)).query)["secret"][0])
    r = arr.vstor("snapshot", "lock", "v/s1", "--until", "1d", "--as", "alice", "--otp", a0, check=False)
    assert "already used" in one_error_line(r, "replayed code") and r.returncode == 15

    r = arr.vstor("snapshot", "lock", "v/s1", "--until", "1d", "--as", "bob", "--otp", bob.now())
    assert r.stdout.startswith("locked snapshot v/s1 until ")
    locks = arr.vstor_json("admin", "locks")
    assert [x["what"] for x in locks["locks"] if x["active"]] == ["snapshot v/s1"]
    assert locks["compliance_time"] >= time.time() - 60

    arr.vstor("admin", "require-approval", "on", "--as", "alice", "--otp", alice.at(time.time() + 30))
    r = arr.vstor("snapshot", "delete", "v", "s1", "--as", "bob", "--otp", bob.at(time.time() + 30), check=False)
    assert r.returncode == 16 and "waits for a second admin's approval" in r.stdout, (r.stdout, r.stderr)
    pending = arr.vstor_json("admin", "requests")
    assert [(p["op"], p["requester"], p["args"]) for p in pending] == [
        ("snapshot.delete", "bob", {"owner": "v", "name": "s1"})]
    assert [s["name"] for s in arr.vstor_json("snapshot", "list", "v")] == ["s1"]

    log = arr.vstor_json("audit", "log")
    assert [(e["action"], e.get("admin")) for e in log] == [
        ("admin.enroll", None), ("admin.enroll", "alice"), ("snapshot.lock", "bob"),
        ("admin.require_approval", "alice"), ("approval.request", "bob")]
    assert alice.secret not in json.dumps(log) and bob.secret not in json.dumps(log)
