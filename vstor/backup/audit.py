"""A hash-chained, append-only audit log of backup administration (the pool state file
``backup/audit.log``).

Each line is one JSON entry {"seq", "time", "actor", "action", "details", "prev", "hash"}, plus
"admin" and "approved_by" when governance authorized the change (AUTHORITY):
``hash`` is the SHA-256 of the canonical JSON (sorted keys, no spaces) of the entry without
"hash", and ``prev`` is the previous entry's hash ("0" * 64 for the first). See backup.md §5.4.

Guarantees:
* The log is a pool state file (vstor/store/backend/statefiles.py): ``POOL/backup/audit.log``,
  appended to (``O_APPEND``, fsync) on a local pool, or an object of a RADOS pool appended to
  by one atomic append op (backend/rados/append.py; past 64 MiB it is striped and replaced whole
  at each entry). An entry reads the log's tail and writes the entry, whatever the log's
  length. ``append`` returns only after the line is durable;
  appends are serialized by one lock within the process, and only the process that holds the
  pool (its pool lock) writes. The file is created with mode 0600.
* ``verify`` finds an edited entry, an inserted or removed entry (seq gap or prev mismatch),
  time going backwards and a truncated last line. Removing entries from the end, or rewriting the
  whole chain, cannot be seen from inside the log: keep ``head()`` outside the array (in approval
  records, a WORM copy, the replica) and pass it to ``verify(anchor=...)``.
* A torn last line (a crash during a write) is cut off by the next ``append``, which then records
  an "audit.torn-tail" entry with the cut bytes' length and SHA-256, so the cut itself is audited.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import pwd
import threading
from typing import TYPE_CHECKING

from vstor.clock import Clock

if TYPE_CHECKING:
    from vstor.store.backend.statefiles import PoolFiles

GENESIS = "0" * 64
AUDIT_FILE = "audit.log"  # among the pool's backup state files
_LOCK = threading.Lock()  # serializes appends within the process (one process owns the pool)
TAIL_BYTES = 64 * 1024  # what an append reads of the log to find the last entry (more if it is longer)


def canonical(entry: dict) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(entry: dict) -> str:
    """The hash of an entry: SHA-256 of its canonical JSON without "hash"."""
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


ACTOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("vstor_actor", default=None)
"""The user a request acts for, set by the daemon's control server from the peer's credentials."""

AUTHORITY: contextvars.ContextVar[dict | None] = contextvars.ContextVar("vstor_authority", default=None)
"""The governance of the running request: {"admin": NAME} (whose one-time code was accepted) and,
for an approved request, "approved_by". Set by the control adapter; the entries written while it
is set carry these fields (older entries have none, and still verify: the hash covers what is there)."""


def current_actor() -> str:
    """The acting user: the control request's peer (ACTOR), else SUDO_USER, else the login name,
    else the uid's name, else the uid."""
    if ACTOR.get():
        return ACTOR.get() or ""
    if os.environ.get("SUDO_USER"):
        return os.environ["SUDO_USER"]
    with contextlib.suppress(OSError):
        return os.getlogin()
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


class AuditLog:
    def __init__(self, files: PoolFiles, clock: Clock) -> None:
        """``files``: the pool's ``backup`` state files (vstor/store/backend/statefiles.py); the
        log is their AUDIT_FILE."""
        self.files = files
        self.clock = clock
        self._lock = _LOCK  # one for every instance: the control server may make one per request
        if not files.exists(AUDIT_FILE):
            files.append(AUDIT_FILE, b"")

    def _read(self) -> bytes:
        return self.files.read(AUDIT_FILE) or b""

    def append(self, actor: str, action: str, details: dict) -> dict:
        """Add one entry and fsync it; returns the entry as written. Reads only the log's tail
        (TAIL_BYTES, more if the last entry is longer), so an entry's cost does not grow with
        the log; the whole log only when it ends in a torn line."""
        with self._lock:
            torn_tail, last = self._last()
            if not torn_tail:
                return self._write(last, actor, action, details)
            data = self._read()
            cut = data.rfind(b"\n") + 1
            data, torn = data[:cut], data[cut:]
            self.files.write(AUDIT_FILE, data)  # the torn tail cut off (atomic replace)
            last = self._write(_last_entry(data), "vstor", "audit.torn-tail", {
                "bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest(),
                "note": "a torn last line (a crash during a write) was cut off"})
            return self._write(last, actor, action, details)

    def _last(self) -> tuple[bool, dict | None]:
        """(whether the log ends in a torn line, its last complete entry or None), from the
        log's tail; the entry is None when the tail is torn (the caller reads the whole log)."""
        size = TAIL_BYTES
        while True:
            got = self.files.read_tail(AUDIT_FILE, size)
            length, tail = got if got is not None else (0, b"")
            if tail and not tail.endswith(b"\n"):
                return True, None
            whole = len(tail) >= length
            if not whole:
                tail = tail[tail.find(b"\n") + 1:]  # the first line may have begun before the tail
            last = _last_entry(tail)
            if last is not None or whole:
                return False, last
            size *= 4

    def _write(self, last: dict | None, actor: str, action: str, details: dict) -> dict:
        entry = {"seq": (last["seq"] + 1) if last else 1, "time": self.clock.time(), "actor": actor,
                 "action": action, "details": details, "prev": last["hash"] if last else GENESIS}
        entry.update({k: v for k, v in (AUTHORITY.get() or {}).items() if k in ("admin", "approved_by") and v})
        entry["hash"] = entry_hash(entry)
        self.files.append(AUDIT_FILE, canonical(entry) + b"\n")  # durable on return
        return entry

    def entries(self) -> list[dict]:
        """The entries that parse, in file order (a torn or garbled line is left out; see verify)."""
        out = []
        for line in self._read().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    out.append(entry)
        return out

    def head(self) -> str:
        """The hash of the last entry ("0" * 64 when empty): anchor it outside the array."""
        torn_tail, last = self._last()
        if torn_tail:
            last = _last_entry(self._read())
        return last["hash"] if last else GENESIS

    def verify(self, anchor: str | None = None) -> list[str]:
        """Problems found, one line each; empty when the chain is intact (and holds ``anchor``)."""
        data = self._read()
        lines = data.split(b"\n")
        torn_tail = lines[-1] != b""
        if not torn_tail:
            lines.pop()
        problems: list[str] = []
        seq, prev, time, hashes = 0, GENESIS, float("-inf"), set()
        for n, raw in enumerate(lines, 1):
            try:
                e = json.loads(raw)
                seq_n, prev_n, hash_n, time_n = int(e["seq"]), e["prev"], e["hash"], float(e["time"])
            except (ValueError, TypeError, KeyError):
                if n == len(lines) and torn_tail:
                    problems.append(f"line {n}: the last line is truncated (a crash during a write, or the "
                                    "file was cut)")
                else:
                    problems.append(f"line {n}: not an audit entry (garbled or inserted)")
                continue
            if seq_n != seq + 1:
                problems.append(f"line {n}: seq {seq_n} where {seq + 1} was expected: an entry was inserted "
                                "or removed")
            if prev_n != prev:
                problems.append(f"line {n} (seq {seq_n}): prev does not match the entry before it: an entry "
                                "was inserted, removed or edited")
            if entry_hash(e) != hash_n:
                problems.append(f"line {n} (seq {seq_n}): hash does not match the content: the entry was edited")
            if time_n < time:
                problems.append(f"line {n} (seq {seq_n}): time goes backwards")
            seq, prev, time = seq_n, hash_n, max(time, time_n)
            hashes.add(hash_n)
        if anchor is not None and anchor != GENESIS and anchor not in hashes:
            problems.append(f"the anchored head {anchor[:16]}... is not in the log: entries were removed from "
                            "the end or the log was rewritten")
        return problems


def _last_entry(data: bytes) -> dict | None:
    """The last complete entry of ``data`` (a torn last line is skipped)."""
    for line in reversed(data.split(b"\n")[:-1]):  # the last piece is "" or a torn line
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and "hash" in entry and "seq" in entry:
                return entry
    return None
