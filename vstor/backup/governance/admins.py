"""Enrolled administrators and their TOTP secrets (POOL/backup/admins.json).

TOTP is RFC 6238 through pyotp: SHA-1, 6 digits, 30 s steps. A code is accepted for the step
before, at or after now (at most one step of drift, RFC 6238 §5.2), and only when its step is
later than the admin's last accepted one, so a code is never accepted twice and no older code
is accepted after a newer one (replay, §5.2). Five wrong codes in a row lock the admin name for
15 minutes (``MAX_FAILURES``, ``LOCKOUT``); the times come from an injected clock.

The file (a pool state file: vstor/store/backend/statefiles.py) holds the secrets: mode 0600 on a
local pool, replaced atomically, sealed (vstor/checkedjson.py) with a ``checksum`` (sha256 hex of
the canonical JSON without it). A secret is returned once, by ``enroll``, and never again.
Pure logic: no sockets; the caller serializes calls (one process holds the pool).
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING

import pyotp

from vstor import checkedjson
from vstor.clock import Clock
from vstor.errors import AlreadyExists, NotFound, Refused, UsageError

if TYPE_CHECKING:
    from vstor.store.backend.statefiles import PoolFiles

__all__ = ["ADMINS_FILE", "DRIFT", "ISSUER", "LOCKOUT", "MAX_FAILURES", "STEP", "VERSION", "AdminStore"]

VERSION = 1
ADMINS_FILE = "admins.json"
STEP = 30  # seconds per TOTP step (RFC 6238 X)
DRIFT = 1  # steps accepted on each side of now
MAX_FAILURES = 5
LOCKOUT = 15 * 60.0  # seconds an admin name is locked after MAX_FAILURES wrong codes
ISSUER = "vstor"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CODE_RE = re.compile(r"^\d{6}$")

_LOCK = threading.Lock()  # serializes read-check-write of the file within the process (a code is
# accepted once, a request approved once, even by two requests at the same moment)


class AdminStore:
    def __init__(self, files: PoolFiles, clock: Clock) -> None:
        """``files``: the pool's ``backup`` state files (the store's ``files.sub("backup")``)."""
        self.files, self.clock = files, clock
        self._lock = _LOCK  # one for every instance: the control server makes one per request

    # -- the file ----------------------------------------------------------------------------
    def _load(self) -> dict:
        return checkedjson.load(self.files, ADMINS_FILE, {"require_approval": False, "admins": {}}, VERSION,
                                "no admin can be checked, so every guarded change is refused; restore the file "
                                "from a copy", private=True)

    def _save(self, doc: dict) -> None:
        checkedjson.save(self.files, ADMINS_FILE, doc, VERSION)

    # -- queries -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._load()["admins"])

    def listing(self) -> list[dict]:
        """Admins without their secrets."""
        admins = self._load()["admins"]
        return [{"name": n, "created": a["created"], "enrolled_by": a["enrolled_by"],
                 "last_used": a["last_used"], "locked_until": a["locked_until"]} for n, a in sorted(admins.items())]

    def require_approval(self) -> bool:
        return bool(self._load()["require_approval"])

    # -- changes -----------------------------------------------------------------------------
    def enroll(self, name: str, by: str) -> dict:
        """A new admin; returns its secret and provisioning URI (the only time they are shown)."""
        if not _NAME_RE.match(name):
            raise UsageError(f"invalid admin name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        with self._lock:
            doc = self._load()
            if name in doc["admins"]:
                raise AlreadyExists(f"admin {name!r} is already enrolled; remove it first to enrol it again")
            secret = pyotp.random_base32()
            doc["admins"][name] = {"secret": secret, "created": self.clock.time(), "enrolled_by": by,
                                   "last_step": -1, "last_used": None, "failures": 0, "locked_until": 0.0}
            self._save(doc)
        uri = pyotp.TOTP(secret, interval=STEP).provisioning_uri(name=name, issuer_name=ISSUER)
        return {"name": name, "secret": secret, "uri": uri}

    def remove(self, name: str) -> None:
        with self._lock:
            doc = self._load()
            if doc["admins"].pop(name, None) is None:
                raise NotFound(f"no enrolled admin named {name!r} (see 'vstor admin list')")
            self._save(doc)

    def set_require_approval(self, on: bool) -> None:
        with self._lock:
            doc = self._load()
            doc["require_approval"] = bool(on)
            self._save(doc)

    def verify(self, name: str, code: str) -> None:
        """Accept ``code`` for admin ``name`` or raise Refused; records the step or the failure."""
        now = self.clock.time()
        with self._lock:
            doc = self._load()
            admin = doc["admins"].get(name)
            if admin is None:
                raise Refused(f"{name!r} is not an enrolled admin (see 'vstor admin list')")
            if admin["locked_until"] > now:
                left = int((admin["locked_until"] - now + 59) // 60)
                raise Refused(f"admin {name!r} is locked for {left} more minute(s) after {MAX_FAILURES} wrong "
                              "codes; wait, then use a fresh code")
            why = self._check(admin, str(code).strip(), now)
            if why is None:
                admin.update(failures=0, last_used=now)
            else:
                admin["failures"] += 1
                if admin["failures"] >= MAX_FAILURES:
                    admin.update(failures=0, locked_until=now + LOCKOUT)
                    why += f"; {MAX_FAILURES} wrong codes: admin {name!r} is locked for {int(LOCKOUT // 60)} minutes"
            self._save(doc)
        if why is not None:
            raise Refused(why)

    @staticmethod
    def _check(admin: dict, code: str, now: float) -> str | None:
        """None when ``code`` is good (and ``admin['last_step']`` moves to its step), else why not."""
        if not _CODE_RE.match(code):
            return "the one-time code must be 6 digits, from the admin's authenticator app"
        totp = pyotp.TOTP(admin["secret"], interval=STEP)
        here = int(now // STEP)
        for step in range(here - DRIFT, here + DRIFT + 1):
            if pyotp.utils.strings_equal(code, totp.at(step * STEP)):
                if step <= admin["last_step"]:
                    return ("that one-time code was already used (or an older one): wait for the next code "
                            "from the authenticator app")
                admin["last_step"] = step
                return None
        return "wrong one-time code (check the admin name and the authenticator's time)"
