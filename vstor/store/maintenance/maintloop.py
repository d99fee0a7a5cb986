"""The maintenance loop: a thread that ticks every ``commit_interval`` seconds of an injected
clock. A mixin of Reclaimer (reclaim.py), which provides GC, compaction and the fragment
budget; this module holds the loop, the order of its steps and what happens when they fail.

Each tick:
  * commit: fdatasync the journal while it is dirty, which bounds what an un-fsynced crash
    can lose and the dirty page cache;
  * checkpoint: after ``checkpoint_bytes`` of journal or ``checkpoint_interval`` seconds;
  * snapshot policies (policyrun.PolicyRunner: by time or bytes written, with pre/post commands);
  * GC, within the per-tick budget (reclaim.py), except while the host only reads and the
    pool has room (activity.py: reads make no garbage, and moves made then took their CPU);
  * the fragment budget (fragments.py);
  * defragmentation: windows host reads found scattered, and the idle sweep (defrag.py).
A failing step does not stop the others, and no exception ends the loop (steps.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from vstor.store.catalog import compliance
from vstor.store.maintenance.activity import HostActivity
from vstor.store.maintenance.steps import FailureReport, StepsFailed, run_steps

log = logging.getLogger("vstor.reclaim")

# GC gives way to a host that only reads while the pool has this much free space beyond its
# reserve (reads take none, so waiting cannot run it out; below, GC goes on as under writes).
GC_WAIT_ROOM = 1 << 30


class MaintenanceLoop:
    # Provided by Reclaimer.
    store: Any
    clock: Any
    commit_interval: float
    checkpoint_interval: float
    checkpoint_bytes: int
    bytes_per_tick: int
    moves_per_tick: int
    seconds_per_tick: float | None
    report: FailureReport
    snapshots_in_use: Callable[[], dict[int, int]]
    policies: Any  # policyrun.PolicyRunner
    _run_lock: threading.Lock
    _stop: threading.Event
    _thread: threading.Thread | None
    _last_ckpt: float
    _last_cc: float = float("-inf")  # when the compliance clock's high mark was last checked
    candidates: Callable[[], set[int]]
    collect: Callable[..., int]
    keep_fragment_budget: Callable[[], int]
    defrag: Any  # defrag.Defragmenter
    gc_activity: HostActivity  # host I/O between two GC steps
    gc_state: str  # for the status

    def tick(self) -> None:
        """One maintenance pass; the loop calls it (through ``run_tick``), and tests call it
        with a manual clock.

        The steps run in order: commit, checkpoint, snapshot policies, GC, fragment budget,
        defrag.
        A step that raises does not stop the ones after it, so a bug in GC or a corrupt chunk
        it reads never holds back the commits that bound an un-fsynced crash's loss. Raises
        StepsFailed, naming every failed step, once all have had their turn. Nothing runs
        once the journal has failed: the store refuses writes, and the status says why."""
        with self._run_lock:
            run_steps((("commit", self._commit), ("checkpoint", self._checkpoint),
                       ("snapshot policy", self._policies), ("gc", self._gc),
                       ("fragment budget", self.keep_fragment_budget), ("defrag", self.defrag.tick)),
                      halt=lambda: bool(self.store.journal.failed))

    def _commit(self) -> None:
        self.store.journal.faults.hit("maintenance.commit")
        if self.store.journal.dirty():
            self.store.journal.sync()
        else:  # idle since the last sync: a marker after the newest records (Store.mark_durable)
            self.store.mark_durable()

    def _checkpoint(self) -> None:
        st = self.store
        now = self.clock.monotonic()
        appended = st.journal.appended_bytes - st.ckpt_appended
        # The older checkpoint copy lagging holds back segment deletion: one more checkpoint
        # moves it up, also on an idle pool.
        due = appended or st.ckpt_older != st.ckpt_position
        if appended >= self.checkpoint_bytes or (due and now - self._last_ckpt >= self.checkpoint_interval):
            st.checkpoint()
            self._last_ckpt = now

    def _policies(self) -> None:
        now = self.store.clock.monotonic()
        if now - self._last_cc >= compliance.CHECKPOINT_EVERY:  # not a file read on every tick
            self._last_cc = now
            compliance.checkpoint(self.store.files, self.store.clock)  # its high mark, at most once a minute
        if self.store.state.catalog.policies:
            for line in self.policies.run(set(self.snapshots_in_use())):
                log.info("snapshot policy: %s", line)

    def _gc(self) -> None:
        self.store.journal.faults.hit("maintenance.gc")
        if self.gc_activity.look().reading_only and self.store.space.has_room(GC_WAIT_ROOM):
            self.gc_state = "waiting: the host is reading"
            return
        if not self.candidates():
            self.gc_state = "idle: no segment to clean"
            return
        # Within a budget, so host I/O keeps priority. No checkpoint here: it serializes
        # every map under the store lock; the policy above (or reclaim_now, when space
        # runs out) writes the one that lets the emptied segments be deleted.
        self.gc_state = "collecting"
        self.collect(max_bytes=self.bytes_per_tick, max_moves=self.moves_per_tick,
                     max_seconds=self.seconds_per_tick)

    def run_tick(self) -> bool:
        """Run one tick as the loop does: a failure is recorded, never raised. True if the tick
        ran clean.

        The failing steps show as ``last_error`` (``maintenance_error`` in the status), each
        failed tick counts in ``maintenance_errors``, and the log hears of a failure when it
        appears, changes or clears (steps.FailureReport), with the traceback for a bug. The
        loop retries next second: the array keeps serving meanwhile."""
        try:
            self.tick()
        except StepsFailed as e:
            self.store.stats.add(maintenance_errors=1)
            self.report.failed(e)
            return False
        if self.store.journal.failed:  # nothing ran: not a recovery (the status shows the failure)
            return False
        self.report.succeeded()
        return True

    @property
    def last_error(self) -> str:
        return self.report.text

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="vstor-maintenance", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self.clock.wait(self._stop, self.commit_interval):
            self.run_tick()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.policies.close()  # a policy's post command runs before the store closes
