"""The isolated check of a restore drill: a network namespace with only loopback up, and the
check (``e2fsck -fn DEVICE`` or the user's script) run inside it with a time limit.

The check enters only the network namespace (``nsenter --net=/run/netns/NAME``): it sees the
host's mounts (the scratch image on the daemon's FUSE mount, the scratch mount point), where
``ip netns exec`` would give it a private mount namespace. It cannot reach any network: the
namespace has no interface but ``lo``.

Guarantees: ``run_check`` returns once the check and every process of its session have ended
(on its exit, on the time limit or when ``stop`` is set: SIGKILL to its process group); its
output is kept to the last ``TAIL`` bytes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass

from vstor.errors import ExternalToolError

__all__ = ["TAIL", "CheckResult", "make_netns", "netns_exists", "remove_netns", "run_check"]

TAIL = 4096  # bytes of the check's output kept in the catalog
POLL = 0.05  # seconds between looks at the check, the time limit and the stop event


@dataclass
class CheckResult:
    exit_code: int | None  # None: killed at the time limit or by a stop
    output: str  # the last TAIL bytes of stdout and stderr together
    seconds: float
    timed_out: bool = False
    stopped: bool = False


def netns_exists(name: str) -> bool:
    from pyroute2 import netns  # here, not at the top: it adds ~0.2 s to every daemon start

    return name in netns.listnetns()


def make_netns(name: str) -> None:
    """Create network namespace ``name`` with only ``lo``, up. ExternalToolError if it cannot be made."""
    from pyroute2 import NetNS, netns

    try:
        netns.create(name)
        with NetNS(name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
    except Exception as e:  # noqa: BLE001 - pyroute2 raises OSError, NetlinkError and others
        with contextlib.suppress(Exception):
            netns.remove(name)
        raise ExternalToolError(f"cannot create the drill's network namespace {name} ({e}): restore drills "
                                "need root (CAP_SYS_ADMIN) for their isolated check") from None


def remove_netns(name: str) -> None:
    """Remove ``name`` if it exists (idempotent)."""
    from pyroute2 import netns

    if netns_exists(name):
        netns.remove(name)


def run_check(argv: list[str], ns: str, env: dict[str, str], cwd: str, timeout: float,
              stop: threading.Event | None = None) -> CheckResult:
    """Run ``argv`` in network namespace ``ns``; see the module docstring."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", *argv], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                    start_new_session=True)
        except OSError as e:
            raise ExternalToolError(f"cannot run the drill's check {argv[0]}: {e.strerror or e}") from None
        timed_out = stopped = False
        try:
            while proc.poll() is None:
                if time.monotonic() - t0 > timeout:
                    timed_out = True
                    break
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(POLL)
        finally:
            if proc.poll() is None or timed_out or stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        size = out.seek(0, os.SEEK_END)
        out.seek(max(0, size - TAIL))
        tail = out.read().decode(errors="replace")
    code = None if (timed_out or stopped) else proc.returncode
    return CheckResult(code, tail, time.monotonic() - t0, timed_out, stopped)
