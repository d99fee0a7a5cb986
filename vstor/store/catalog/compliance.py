"""Compliance locks (SnapLock-like) and the pool's monotonic compliance clock.

A lock holds a backup job, a backup policy (every job of it) or a snapshot until a date:
until then nothing deletes, expires or shortens it, and the lock itself can only be extended.
Lock dates are compared with the *compliance time*, never with the wall clock alone:

* ``meta/compliance-clock.json`` keeps the highest wall-clock time the pool has seen; it is
  raised on every lock check and by the maintenance loop (at most once a minute);
* compliance time = max(that, wall clock now). A system clock set back therefore shortens
  nothing; one set forward makes locks expire early by at most the jump (the high mark stays
  there). SnapLock's ComplianceClock likewise only moves forward.

Both are state files of the pool (``PoolFiles``: files in ``POOL/meta/``, or RADOS objects),
sealed JSON (vstor/checkedjson.py: a ``checksum``, sha256 hex of the canonical JSON without
it), mode 0600 on a local pool, replaced atomically. A damaged file refuses every check (a lock is never dropped because
its record cannot be read). Pure file logic: no sockets, no FUSE, no backup imports, so the
store's snapshot delete path and the backup engine share it.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from vstor import checkedjson
from vstor.clock import Clock
from vstor.errors import Refused, UsageError

if TYPE_CHECKING:
    from vstor.store.backend.statefiles import PoolFiles

__all__ = ["CHECKPOINT_EVERY", "CLOCK_FILE", "GUARD", "LOCKS_FILE", "VERSION", "ComplianceClock", "Locks",
           "checkpoint", "for_pool", "job_key", "policy_key", "refuse_if_locked", "show_time", "snapshot_key"]

VERSION = 1
CLOCK_FILE = "compliance-clock.json"  # under POOL/meta/
LOCKS_FILE = "locks.json"  # under POOL/meta/
CHECKPOINT_EVERY = 60.0  # seconds: the periodic checkpoint persists the high mark at most this often
_mutex = threading.Lock()  # one writer at a time within the process (offline commands hold the pool lock)
GUARD = threading.RLock()
"""Held across "is it locked?" and the act (a delete, an expiry) and around setting a lock, so a
lock set meanwhile cannot miss an act already decided."""



def _load(files: PoolFiles, name: str, empty: dict) -> dict:
    return checkedjson.load(files, name, empty, VERSION, "compliance locks cannot be checked, so nothing they may "
                            "protect can be deleted; restore the file from a copy")


def _store(files: PoolFiles, name: str, doc: dict) -> None:
    checkedjson.save(files, name, doc, VERSION)


def show_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def job_key(job: int) -> str:
    return f"job:{int(job)}"


def policy_key(name: str) -> str:
    return f"policy:{name}"


def snapshot_key(sid: int) -> str:
    return f"snapshot:{int(sid)}"


class ComplianceClock:
    """max(highest wall-clock time persisted, wall clock now); persists a new high mark."""

    def __init__(self, meta: PoolFiles, clock: Clock) -> None:
        self.files, self.clock = meta, clock

    def now(self, persist_after: float = 0.0) -> float:
        """Compliance time; a wall clock more than ``persist_after`` seconds past the high mark is
        persisted as the new one (0: any advance, as every lock check does)."""
        wall = self.clock.time()
        with _mutex:
            high = float(_load(self.files, CLOCK_FILE, {"highest": 0.0})["highest"])
            if wall > high + persist_after or (wall > high and not persist_after):
                _store(self.files, CLOCK_FILE, {"highest": wall})
        return max(wall, high)

    def checkpoint(self) -> float:
        """The periodic checkpoint (the maintenance loop's every tick): persists at most once a minute."""
        return self.now(CHECKPOINT_EVERY)

    def time(self) -> float:  # a Clock-like view, for the approval requests' deadlines
        return self.now()


class Locks:
    """Lock records: key ("job:N", "policy:NAME", "snapshot:SID") -> {"until", "set", "by", "what"}."""

    def __init__(self, meta: PoolFiles) -> None:
        self.files = meta

    def all(self) -> dict[str, dict]:
        return dict(_load(self.files, LOCKS_FILE, {"locks": {}})["locks"])

    def until(self, *keys: str) -> float | None:
        """The latest lock date over ``keys`` (a job and its policy), None if none is locked."""
        locks = self.all()
        dates = [locks[k]["until"] for k in keys if k in locks]
        return max(dates) if dates else None

    def set(self, key: str, until: float, now: float, by: str, what: str) -> dict:
        """Lock ``key`` until ``until`` (compliance time ``now``): a new lock or an extension only."""
        if until <= now:
            raise UsageError(f"the lock date {show_time(until)} is not in the future (compliance time is "
                             f"{show_time(now)}): give a later --until")
        with _mutex:
            doc = _load(self.files, LOCKS_FILE, {"locks": {}})
            old = doc["locks"].get(key)
            if old is not None and until < old["until"]:
                raise Refused(f"{what} is locked until {show_time(old['until'])}: a compliance lock can be "
                              "extended, never shortened or removed")
            doc["locks"][key] = {"until": until, "set": now, "by": by, "what": what}
            _store(self.files, LOCKS_FILE, doc)
            return {"key": key} | doc["locks"][key]


def for_pool(files: PoolFiles, clock: Clock) -> tuple[ComplianceClock, Locks]:
    """The clock and locks of the pool whose state files are ``files`` (``store.files``)."""
    meta = files.sub("meta")
    return ComplianceClock(meta, clock), Locks(meta)


def checkpoint(files: PoolFiles, clock: Clock) -> float:
    """The compliance clock's periodic checkpoint (the maintenance loop calls it every tick)."""
    return for_pool(files, clock)[0].checkpoint()


def refuse_if_locked(files: PoolFiles, clock: Clock, keys: tuple[str, ...], what: str, doing: str) -> None:
    """Raise Refused when any of ``keys`` is locked past the compliance time."""
    cc, locks = for_pool(files, clock)
    until = locks.until(*keys)
    if until is None:
        return
    now = cc.now()
    if now < until:
        raise Refused(f"{what} is under a compliance lock until {show_time(until)}: it cannot be {doing} "
                      "before then, by anyone")
