"""Fault injection hooks, in the spirit of nbdkit's error filter and s3backer's --test-errors.

Code calls ``faults.hit("point")`` at named points. A test (or the VSTOR_FAULTS
environment variable, for a daemon) arms a point with an action that fires on the
N-th hit:

    VSTOR_FAULTS="journal.write=enospc@5,journal.sync=eio"

Actions: ``enospc`` and ``eio`` raise OSError; ``bug`` raises RuntimeError, standing in for
a programming error; ``torn`` asks the caller to write only part of its buffer and then die
(the caller implements it); ``kill`` sends SIGKILL to this process, a crash at an exact point;
``delay`` sleeps ``Faults.delay`` seconds (0.5), a slow step (outside any lock, where used).
A point fires once unless its count ends in ``+`` (``eio@3+``: the third hit and every hit
after it).
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from dataclasses import dataclass

from vstor.errors import UsageError

ACTIONS = ("enospc", "eio", "bug", "torn", "kill", "delay")


@dataclass
class _Arm:
    action: str
    at: int
    repeat: bool
    hits: int = 0


class Faults:
    def __init__(self, spec: str = "") -> None:
        self._arms: dict[str, _Arm] = {}
        self._lock = threading.Lock()
        self.delay = 0.5
        for item in filter(None, (s.strip() for s in spec.split(","))):
            point, _, rest = item.partition("=")
            action, _, count = rest.partition("@")
            repeat = count.endswith("+")
            if action not in ACTIONS or not point or not (count.rstrip("+") or "1").isdigit():
                raise UsageError(f"bad fault spec {item!r}: use POINT=ACTION[@N[+]] with ACTION in {ACTIONS}")
            self.arm(point, action, int(count.rstrip("+") or 1), repeat)

    @classmethod
    def from_env(cls) -> Faults:
        return cls(os.environ.get("VSTOR_FAULTS", ""))

    def arm(self, point: str, action: str, at: int = 1, repeat: bool = False) -> None:
        with self._lock:
            self._arms[point] = _Arm(action, at, repeat)

    def disarm(self, point: str | None = None) -> None:
        with self._lock:
            if point is None:
                self._arms.clear()
            else:
                self._arms.pop(point, None)

    def armed(self, point: str) -> bool:
        """Whether ``point`` is armed (a caller that would hold a lock across the hit asks first)."""
        return bool(self._arms) and point in self._arms

    def hits(self, point: str) -> int:
        """How many times ``point`` was passed since it was armed (0 if it is not armed)."""
        with self._lock:
            arm = self._arms.get(point)
            return arm.hits if arm is not None else 0

    def hit(self, point: str) -> str | None:
        """Count a pass through ``point``; raise or return the armed action when it fires."""
        if not self._arms:
            return None
        with self._lock:
            arm = self._arms.get(point)
            if arm is None:
                return None
            arm.hits += 1
            if arm.hits < arm.at or (arm.hits > arm.at and not arm.repeat):
                return None
            action = arm.action
        if action == "enospc":
            raise OSError(errno.ENOSPC, f"injected ENOSPC at {point}")
        if action == "eio":
            raise OSError(errno.EIO, f"injected EIO at {point}")
        if action == "bug":
            raise RuntimeError(f"injected bug at {point}")
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "delay":
            time.sleep(self.delay)
        return action


NO_FAULTS = Faults()
