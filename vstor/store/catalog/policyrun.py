"""Automatic snapshots with the policy's pre and post commands (hooks.py).

The maintenance loop's snapshot-policy step (maintloop.py) asks snapshots.run_policies what
is due and hands each due snapshot to :meth:`PolicyRunner.take`:

* a policy without commands is snapshotted at once, in the tick, as before;
* a policy with commands runs pre, the snapshot and post in a worker (``spawn``): a pre may
  take up to its timeout, and the tick must keep committing the journal meanwhile. One run
  per owner at a time: while it is in flight the owner is skipped;
* a failed run (pre failed or timed out, or the snapshot failed) is logged with its reason and
  kept in :attr:`PolicyRunner.last`; the owner is not tried again for ``min_interval``
  seconds, so a broken pre command does not run every second.

``runner`` (hooks.HookRunner) and ``spawn`` are constructor parameters: tests give a
synchronous spawn and a runner with fault injection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from vstor.errors import VstorError
from vstor.hooks import HookRunner, Hooks, ShellRunner, around
from vstor.store.catalog import snapshots
from vstor.store.catalog.groups import Policy, auto_name
from vstor.store.store import Store
from vstor.units import format_size

__all__ = ["PolicyRunner", "thread_spawn"]

log = logging.getLogger("vstor.snapshots")

Spawn = Callable[[Callable[[], None], str], None]


def thread_spawn(work: Callable[[], None], name: str) -> threading.Thread:
    t = threading.Thread(target=work, name=name, daemon=True)
    t.start()
    return t


class PolicyRunner:
    def __init__(self, store: Store, runner: HookRunner | None = None, spawn: Spawn | None = None) -> None:
        self.store = store
        self.runner: HookRunner = runner or ShellRunner(store.faults)
        self._spawn = spawn
        self._lock = threading.Lock()
        self._busy: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._retry_at: dict[str, float] = {}  # owner -> clock time before which a failed run is not retried
        self.last: dict[str, dict] = {}  # owner -> the outcome of its last automatic snapshot

    def run(self, in_use: set[int] = frozenset()) -> list[str]:  # type: ignore[assignment]
        """One policy pass (the maintenance tick's step)."""
        return snapshots.run_policies(self.store, in_use, self.take)

    def take(self, owner: str, policy: Policy, why: str, since: int) -> str | None:
        now = self.store.clock.time()
        with self._lock:
            if owner in self._busy or now < self._retry_at.get(owner, float("-inf")):
                return None
            self._busy.add(owner)
        what = f"{why}: {format_size(since, True)} written since the last snapshot" if why == "written" else why
        hooks = Hooks(policy.pre, policy.post, policy.hook_timeout)
        if not hooks:
            try:
                return self._take(owner, policy, why, hooks, now)
            finally:
                with self._lock:
                    self._busy.discard(owner)

        def work() -> None:
            try:
                self._take(owner, policy, why, hooks, now)
            finally:
                with self._lock:
                    self._busy.discard(owner)

        if self._spawn is None:
            t = thread_spawn(work, f"vstor-policy-{owner}")
            with self._lock:
                self._threads = [x for x in self._threads if x.is_alive()] + [t]
        else:
            self._spawn(work, f"vstor-policy-{owner}")
        return f"started {owner} ({what}) with its pre/post commands"

    def _take(self, owner: str, policy: Policy, why: str, hooks: Hooks, now: float) -> str | None:
        with self.store.locked():
            cat = self.store.state.catalog
            kind, oid = cat.owner(self.store.state.table, owner)
            name = auto_name({s.name for s in cat.snapshots_of(kind, oid)}, now)
        env = {"VSTOR_GROUP": owner, "VSTOR_SNAPSHOT": name, "VSTOR_POLICY": f"snapshot:{owner}",
               "VSTOR_TRIGGER": why}
        outcome: dict = {"when": now, "trigger": why, "snapshot": name}
        try:
            around(hooks, self.runner, env, lambda: snapshots.create(self.store, owner, name, auto=True))
        except VstorError as e:
            outcome |= {"result": "failed", "reason": e.message}
            with self._lock:
                self._retry_at[owner] = now + policy.min_interval
            if hooks:  # no commands: run_policies logs it (an empty group is not an error)
                log.error("automatic snapshot of %s (%s) failed: %s", owner, why, e.message)
            else:
                raise
            return None
        finally:
            outcome["hooks"] = [{"phase": r.phase, "rc": r.rc, "seconds": round(r.seconds, 3)}
                                for r in hooks.results]
            self.last[owner] = outcome
        outcome["result"] = "ok"
        post_failed = next((r for r in hooks.results if r.phase == "post" and not r.ok), None)
        if post_failed is not None:
            outcome["reason"] = post_failed.reason()
        line = f"created {owner}/{name} ({why})"
        if hooks:
            log.info("snapshot policy: %s", line)
        return line

    def close(self, timeout: float = 300.0) -> None:
        """Wait for runs in flight (their post commands must run before the store closes)."""
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout)
