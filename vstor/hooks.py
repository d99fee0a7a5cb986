"""Pre and post commands around a snapshot: application-consistent snapshots and backups.

A snapshot policy (``vstor snapshot policy set --pre/--post``) or a backup policy
(``vstor backup policy create --pre/--post``) names shell commands. Around each snapshot:

1. ``pre`` runs (``sh -c CMD``). If it exits non-zero or outlives its timeout, the snapshot
   is not taken: the job or the policy run fails with a reason naming the command, its exit
   status (or the timeout) and the last line it printed;
2. the snapshot is taken (with the backup policy's ``--freeze`` mount points frozen around
   it, as before);
3. ``post`` runs, always: after a failed pre, a failed snapshot or a good one. A failing post
   is logged (and kept in the outcome) but does not undo the snapshot.

The commands see the daemon's environment plus VSTOR_GROUP (the group or volume),
VSTOR_SNAPSHOT (the snapshot's name), VSTOR_POLICY, VSTOR_PHASE ("pre" or "post") and, for
post, VSTOR_RESULT ("ok" or "failed"). A timed-out command's whole process group is killed.

The runner is a constructor parameter of its users (the snapshot policy runner, the backup
engine): :class:`ShellRunner` runs real processes and has fault points ``hook.pre`` and
``hook.post`` (vstor/faults.py actions ``eio``: the command fails; ``delay``: it times out),
so tests get deterministic failures with or without real commands.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from vstor.errors import ExternalToolError
from vstor.faults import NO_FAULTS, Faults

__all__ = ["DEFAULT_TIMEOUT", "HookResult", "HookRunner", "Hooks", "ShellRunner", "around"]

log = logging.getLogger("vstor.hooks")

DEFAULT_TIMEOUT = 60.0  # seconds
OUTPUT_LIMIT = 4096  # bytes of a command's output kept for the reason and the log

T = TypeVar("T")


@dataclass
class HookResult:
    command: str
    phase: str
    rc: int | None  # None: timed out
    output: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def reason(self) -> str:
        """One line: what failed and how."""
        how = "timed out" if self.rc is None else f"exited with status {self.rc}"
        last = next((ln.strip() for ln in reversed(self.output.splitlines()) if ln.strip()), "")
        return f"{self.phase} command {self.command!r} {how}" + (f": {last[:200]}" if last else "")


class HookRunner(Protocol):
    def run(self, command: str, env: Mapping[str, str], timeout: float, phase: str) -> HookResult: ...


class ShellRunner:
    """Runs a command with ``sh -c`` in its own process group, output captured, killed (the
    whole group) at the timeout."""

    def __init__(self, faults: Faults = NO_FAULTS, shell: str = "/bin/sh") -> None:
        self.faults, self.shell = faults, shell

    def run(self, command: str, env: Mapping[str, str], timeout: float, phase: str) -> HookResult:
        try:
            if self.faults.hit(f"hook.{phase}") == "delay":
                return HookResult(command, phase, None, "injected timeout", timeout)
        except OSError as e:
            return HookResult(command, phase, 1, str(e))
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen([self.shell, "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True)
        except OSError as e:  # no shell, no memory for a process: as sh says when it cannot run a command
            return HookResult(command, phase, 127, f"cannot run {self.shell}: {e.strerror or e}")
        try:
            out, _ = proc.communicate(timeout=timeout)
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            rc = None
        text = out[-OUTPUT_LIMIT:].decode(errors="replace")
        return HookResult(command, phase, rc, text, time.monotonic() - t0)


@dataclass
class Hooks:
    """The pre and post commands of one policy."""

    pre: str = ""
    post: str = ""
    timeout: float = DEFAULT_TIMEOUT
    results: list[HookResult] = field(default_factory=list)  # what ran, filled by around()

    def __bool__(self) -> bool:
        return bool(self.pre or self.post)


def around(hooks: Hooks, runner: HookRunner, env: Mapping[str, str], action: Callable[[], T]) -> T:
    """Run ``hooks.pre``, then ``action`` (the snapshot), then ``hooks.post``, always.

    Raises ExternalToolError with the pre command's reason when it fails (``action`` is not
    called), or whatever ``action`` raised; post has run in both cases. A failing post is
    logged and kept in ``hooks.results``; ``action``'s result is returned."""
    base = {k: v for k, v in env.items() if v is not None}
    ok = False
    try:
        if hooks.pre:
            r = runner.run(hooks.pre, base | {"VSTOR_PHASE": "pre"}, hooks.timeout, "pre")
            hooks.results.append(r)
            if not r.ok:
                raise ExternalToolError(f"snapshot not taken: {r.reason()}")
        result = action()
        ok = True
        return result
    finally:
        if hooks.post:
            r = runner.run(hooks.post, base | {"VSTOR_PHASE": "post", "VSTOR_RESULT": "ok" if ok else "failed"},
                           hooks.timeout, "post")
            hooks.results.append(r)
            if not r.ok:
                log.error("%s (%s): thaw or resume the application by hand if it is still held",
                          r.reason(), base.get("VSTOR_GROUP", ""))
