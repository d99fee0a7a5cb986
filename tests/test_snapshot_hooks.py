"""Pre and post commands around automatic snapshots and backup jobs (vstor/hooks.py), with real
``sh -c`` processes and with injected faults: order, environment, a failing pre, a timeout,
a failing post, and the maintenance tick not waiting for a slow pre."""

from __future__ import annotations

import time

import pytest
from poolkit import MiB, make_pool

from vstor.clock import ManualClock
from vstor.faults import Faults
from vstor.hooks import Hooks, ShellRunner, around
from vstor.store.catalog import snapshots
from vstor.store.maintenance.reclaim import Reclaimer
from vstor.store.store import Store

pytestmark = pytest.mark.usefixtures("pool_backend")  # each test on a local and a RADOS pool (tests/poolsite.py)

# Each phase appends one line: the phase and the variables the commands get.
RECORD = ('echo "$VSTOR_PHASE group=$VSTOR_GROUP snap=$VSTOR_SNAPSHOT policy=$VSTOR_POLICY '
          'result=$VSTOR_RESULT" >> {log}')


class Observed:
    """A real ShellRunner that also notes how many snapshots the owner had when each command ran
    (what tells pre ran before the snapshot and post after it)."""

    def __init__(self, store: Store, faults: Faults | None = None) -> None:
        self.store, self.shell = store, ShellRunner(faults or Faults())
        self.seen: list[tuple[str, int]] = []

    def run(self, command, env, timeout, phase):
        self.seen.append((phase, len(self.store.state.catalog.snaps)))
        return self.shell.run(command, env, timeout, phase)


def _setup(tmp_path, faults: Faults | None = None, sync: bool = True):
    clock = ManualClock()
    store = Store.open(make_pool(tmp_path), clock=clock)
    store.create_volume("a", 4 * MiB)
    store.event(lambda st: st.catalog.make_group_create(st.table, "g", ["a"], 0.0))
    runner = Observed(store, faults)
    gc = Reclaimer(store, clock=clock, hooks=runner, spawn=(lambda work, name: work()) if sync else None)
    return clock, store, runner, gc


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_pre_and_post_run_in_order_with_their_environment(tmp_path):
    clock, store, runner, gc = _setup(tmp_path)
    log = tmp_path / "hooks.log"
    snapshots.set_policy(store, "g", 900, 3, 0, pre=RECORD.format(log=log), post=RECORD.format(log=log))
    gc.tick()
    (snap,) = store.state.catalog.snaps.values()
    assert runner.seen == [("pre", 0), ("post", 1)]
    assert _lines(log) == [f"pre group=g snap={snap.name} policy=snapshot:g result=",
                           f"post group=g snap={snap.name} policy=snapshot:g result=ok"]
    last = gc.policies.last["g"]
    assert last["result"] == "ok" and last["snapshot"] == snap.name and [h["rc"] for h in last["hooks"]] == [0, 0]
    store.close()


def test_failing_pre_aborts_the_snapshot_post_still_runs_and_it_is_retried_later(tmp_path):
    clock, store, runner, gc = _setup(tmp_path)
    log = tmp_path / "hooks.log"
    flag = tmp_path / "db-down"
    flag.touch()
    pre = f'if [ -e {flag} ]; then echo "database not reachable" >&2; exit 3; fi'
    snapshots.set_policy(store, "g", 900, 3, 0, min_interval=120, pre=pre, post=RECORD.format(log=log))
    gc.tick()
    assert store.state.catalog.snaps == {}
    last = gc.policies.last["g"]
    assert _lines(log) == [f"post group=g snap={last['snapshot']} policy=snapshot:g result=failed"]
    assert last["result"] == "failed"
    assert last["reason"] == f"snapshot not taken: pre command {pre!r} exited with status 3: database not reachable"
    # Not retried every tick: after min_interval.
    clock.advance(119)
    gc.tick()
    assert len(_lines(log)) == 1
    flag.unlink()
    clock.advance(1)
    gc.tick()
    assert len(store.state.catalog.snaps) == 1 and gc.policies.last["g"]["result"] == "ok"
    assert _lines(log)[-1].endswith("result=ok")
    store.close()


def test_timed_out_pre_is_killed_with_its_children(tmp_path):
    clock, store, runner, gc = _setup(tmp_path)
    log, pidfile = tmp_path / "hooks.log", tmp_path / "child.pid"
    pre = f"sleep 30 & echo $! > {pidfile}; wait"
    snapshots.set_policy(store, "g", 900, 3, 0, pre=pre, post=RECORD.format(log=log), hook_timeout=0.3)
    t0 = time.monotonic()
    gc.tick()
    assert time.monotonic() - t0 < 10
    assert store.state.catalog.snaps == {}
    assert gc.policies.last["g"]["reason"] == f"snapshot not taken: pre command {pre!r} timed out"
    assert gc.policies.last["g"]["hooks"][0]["rc"] is None
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)  # SIGKILLed with its group; init reaps it
    assert not _alive(child), "the timed-out command's child is still running"
    assert _lines(log)[-1].endswith("result=failed")
    store.close()


def test_injected_faults_timeout_and_failing_post(tmp_path):
    faults = Faults("hook.pre=delay,hook.post=eio@2")
    faults.delay = 0
    clock, store, runner, gc = _setup(tmp_path, faults)
    log = tmp_path / "hooks.log"
    snapshots.set_policy(store, "g", 900, 3, 0, min_interval=60, pre=RECORD.format(log=log),
                         post=RECORD.format(log=log), hook_timeout=3600)
    gc.tick()  # the injected timeout: no wait for the hour
    assert store.state.catalog.snaps == {} and "timed out" in gc.policies.last["g"]["reason"]
    assert [ln.split()[0] for ln in _lines(log)] == ["post"]  # the pre never ran; post did
    clock.advance(60)
    gc.tick()  # pre fine, snapshot taken; post fails: logged, the snapshot stays
    assert len(store.state.catalog.snaps) == 1
    last = gc.policies.last["g"]
    assert last["result"] == "ok" and "post command" in last["reason"] and "injected EIO" in last["reason"]
    store.close()


def test_the_tick_does_not_wait_for_a_slow_pre(tmp_path):
    clock, store, runner, gc = _setup(tmp_path, sync=False)
    go = tmp_path / "go"
    pre = f"while [ ! -e {go} ]; do sleep 0.02; done"
    snapshots.set_policy(store, "g", 900, 3, 0, pre=pre)
    assert gc.run_tick()
    assert gc.run_tick()  # the run is in flight: skipped, not started twice
    assert [p for p, _ in runner.seen] == ["pre"] and store.state.catalog.snaps == {}
    go.touch()
    gc.policies.close()
    assert len(store.state.catalog.snaps) == 1 and gc.policies.last["g"]["result"] == "ok"
    store.close()


@pytest.mark.no_pool("hooks.around and a shell: no store")
def test_around_runs_post_when_the_action_fails(tmp_path):
    log = tmp_path / "hooks.log"
    hooks = Hooks("true", RECORD.format(log=log), 5)

    def fail() -> None:
        raise RuntimeError("snapshot failed")

    try:
        around(hooks, ShellRunner(), {"VSTOR_GROUP": "g"}, fail)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the action's error must propagate")
    assert _lines(log) == ["post group=g snap= policy= result=failed"]


def test_backup_policy_pre_post_around_the_job_snapshot(tmp_path):
    from test_backup_engine import Lab

    lab = Lab(tmp_path)
    try:
        log = tmp_path / "hooks.log"
        lab.scribble(4)
        p = lab.policy("db", pre=RECORD.format(log=log), post=RECORD.format(log=log), hook_timeout="5s")
        assert (p["pre"], p["hook_timeout"]) == (RECORD.format(log=log), 5)
        job = lab.engine.run("db", None)
        assert job["status"] == "done", job
        assert _lines(log) == [f"pre group=g snap=backup-{job['id']} policy=db result=",
                               f"post group=g snap=backup-{job['id']} policy=db result=ok"]
        # A failing pre fails the job with its reason; post runs; no snapshot is left behind.
        lab.policy("broken", pre="echo 'cannot reach the database' >&2; exit 7", post=RECORD.format(log=log))
        job = lab.engine.run("broken", None)
        assert job["status"] == "failed"
        assert job["reason"].endswith("exited with status 7: cannot reach the database"), job["reason"]
        assert _lines(log)[-1] == f"post group=g snap=backup-{job['id']} policy=broken result=failed"
        assert [s.name for s in lab.store.state.catalog.snaps.values()] == ["backup-1"]
    finally:
        lab.close()


@pytest.mark.no_pool("ShellRunner alone: no store")
def test_a_runner_that_cannot_start_the_shell_fails_the_pre_cleanly(tmp_path):
    r = ShellRunner(shell=str(tmp_path / "no-such-shell")).run("true", {}, 5, "pre")
    assert r.rc == 127 and not r.ok and "cannot run" in r.reason()
