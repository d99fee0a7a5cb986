"""The group-commit gate (vstor/store/journal/groupcommit.py): callers that arrive during a
flush wait for it, and leave without flushing when it covered them; one of the rest leads the
next flush; a failed flush still wakes everyone. Threads coordinated by events, no sleeps."""

from __future__ import annotations

import threading

from vstor.store.journal.groupcommit import GroupCommit

WAIT = 10.0  # seconds: only a hang reaches it


def _spawn(fn) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def _waiting(gate: GroupCommit, n: int) -> bool:
    return gate.waiting >= n


def _until(pred, what: str) -> None:
    ev = threading.Event()
    for _ in range(int(WAIT * 1000)):
        if pred():
            return
        ev.wait(0.001)
    raise AssertionError(f"timed out waiting for {what}")


def test_callers_during_a_flush_wait_and_leave_when_it_covered_them() -> None:
    gate = GroupCommit()
    durable = [0]
    assert gate.lead(lambda: durable[0] >= 1)  # the first caller leads
    results: dict[str, bool] = {}
    covered_by_it = [_spawn(lambda k=k: results.__setitem__(k, gate.lead(lambda: durable[0] >= 1)))
                     for k in ("a", "b", "c")]
    late = _spawn(lambda: results.__setitem__("late", gate.lead(lambda: durable[0] >= 2)))
    _until(lambda: _waiting(gate, 4), "four callers waiting behind the flush")
    assert not results, "nobody may pass while the leader flushes"
    durable[0] = 1  # the leader's flush covered a, b and c, not the late one
    gate.done()
    for t in [*covered_by_it, late]:
        t.join(WAIT)
    assert results == {"a": False, "b": False, "c": False, "late": True}
    assert (gate.led, gate.joined) == (2, 3)
    gate.done()


def test_only_one_leader_at_a_time_and_a_failed_flush_wakes_the_waiters() -> None:
    gate = GroupCommit()
    durable = [0]
    assert gate.lead(lambda: durable[0] >= 1)
    led = threading.Event()
    waiter = _spawn(lambda: gate.lead(lambda: durable[0] >= 1) and led.set())
    _until(lambda: _waiting(gate, 1), "a caller waiting")
    gate.done()  # the flush failed: nothing became durable
    assert led.wait(WAIT), "the waiter must lead the next flush (and meet the failure itself)"
    waiter.join(WAIT)
    second = threading.Event()
    other = _spawn(lambda: gate.lead(lambda: False) and second.set())
    _until(lambda: _waiting(gate, 1), "a second caller waiting while the new leader flushes")
    assert not second.is_set()
    gate.done()
    assert second.wait(WAIT)
    other.join(WAIT)
    gate.done()


def test_many_writers_each_return_durable_and_never_two_leaders() -> None:
    """16 threads append and sync 300 times each: every sync returns only once its append is
    durable (by its own flush or another's), and no two flushes ever overlap."""
    gate = GroupCommit()
    lock = threading.Lock()
    state = {"appended": 0, "durable": 0, "leaders": 0, "overlaps": 0, "early": 0}

    def writer() -> None:
        for _ in range(300):
            with lock:
                state["appended"] += 1
                target = state["appended"]
            if gate.lead(lambda t=target: state["durable"] >= t):
                try:
                    with lock:
                        state["leaders"] += 1
                        state["overlaps"] += state["leaders"] > 1
                        reached = state["appended"]
                    threading.Event().wait(0.0001)  # the flush
                    with lock:
                        state["durable"] = max(state["durable"], reached)
                        state["leaders"] -= 1
                finally:
                    gate.done()
            with lock:
                state["early"] += state["durable"] < target

    threads = [_spawn(writer) for _ in range(16)]
    for t in threads:
        t.join(WAIT * 3)
    assert not any(t.is_alive() for t in threads), "a writer hung: a waiter was never released"
    assert state["overlaps"] == 0 and state["early"] == 0
    assert gate.led + gate.joined == 16 * 300 and gate.waiting == 0
    assert gate.joined > 0, "no sync ever shared another's flush"
