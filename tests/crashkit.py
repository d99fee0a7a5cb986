"""Crash helpers shared by the store tests: a store dropped as kill -9 would drop it, a pool
opened again and checked, and a child process that a fault kills."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from vstor.store.store import Store

__all__ = ["CHILD_PRELUDE", "crash", "pool_check_passes", "reopen_clean", "run_killed"]

# The start of a child's code for run_killed(code, pool, spec): the store ``st`` of ``pool``
# opened with a Faults of its own, and arm(), which arms ``spec`` (POINT=ACTION@N) when the
# child is ready to be killed. Format it with tests=the tests directory.
CHILD_PRELUDE = """
import os, random, sys
sys.path.insert(0, {tests!r})
from vstor.faults import Faults
from vstor.store.store import Store
pool, spec = sys.argv[1], sys.argv[2]
faults = Faults()
st = Store.open(pool, faults=faults)

def arm():
    point, _, rest = spec.partition("=")
    action, _, at = rest.partition("@")
    faults.arm(point, action, int(at))
"""


def crash(st: Store) -> None:
    """Drop the store as kill -9 would: no checkpoint, the newest segment not cut at its tail
    (the page cache keeps every record written, as it does when only the process dies)."""
    st.journal.failed = "test crash"
    st.journal.close()
    st.backend.close()


def reopen_clean(pool: str, check: Callable[[Store], None]) -> None:
    """Open ``pool`` again: replay must end cleanly (no torn tail); then ``check`` the store."""
    st = Store.open(pool)
    try:
        assert st.recovery["torn_tail"] is None
        check(st)
    finally:
        st.close()


def run_killed(code: str, *args: str) -> None:
    """Run ``code`` in a child Python, which a fault must end with SIGKILL."""
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stdout + r.stderr


def pool_check_passes(pool: str) -> None:
    r = subprocess.run([sys.executable, "-m", "vstor.cli.main", "pool", "check", pool], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
