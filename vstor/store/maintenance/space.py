"""Free-space accounting for the filesystem that holds the pool.

A log-structured pool needs headroom to stay serviceable when full: trims, checkpoints and
garbage collection must still be able to write. Host writes therefore stop (ENOSPC) while
the reserve is still free; only trims and maintenance may dip into it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


class SpaceGuard:
    def __init__(self, path: str, reserve: int, recheck_every: int = 32 << 20,
                 held: Callable[[], int] | None = None) -> None:
        """``held``: bytes the pool already holds allocated past its journal's tail (the live
        segment file is allocated whole when it starts: tailspace.py), which records fill
        without taking more of the filesystem: counted as free, so that the filesystem's free
        space alone does not stop host writes a segment early."""
        self.path = path
        self.reserve = reserve
        self.recheck_every = recheck_every
        self._held = held or (lambda: 0)
        self._lock = threading.Lock()
        self._free = 0
        self._since = recheck_every  # force a statvfs on first use

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def refresh(self) -> int:
        with self._lock:
            self._free = self.free_bytes() + self._held()
            self._since = 0
            return self._free

    def has_room(self, nbytes: int, use_reserve: bool = False) -> bool:
        """True if ``nbytes`` more can be written. statvfs is re-read every ``recheck_every``
        bytes, and whenever the estimate gets near the reserve."""
        need = nbytes + (0 if use_reserve else self.reserve)
        # Checked first without the lock: no recheck due means room by a margin of a whole
        # recheck interval, which also covers reading _free and _since from two updates.
        if not self._recheck_due(need):
            return True
        with self._lock:
            if self._recheck_due(need):
                self._free = self.free_bytes() + self._held()
                self._since = 0
            return self._free - self._since >= need

    def _recheck_due(self, need: int) -> bool:
        return self._since >= self.recheck_every or self._free - self._since < need + self.recheck_every

    def consumed(self, nbytes: int) -> None:
        with self._lock:
            self._since += nbytes
