"""The background remover of deleted segments' objects (vstor/store/backend/remover.py): removals
run on its thread in order, settle waits for them, close waits for all, failures are logged and
counted, never raised. Driven with events, no sleeping."""

from __future__ import annotations

import logging
import threading

import pytest

from vstor.store.backend.remover import Remover

WAIT = 30.0  # only reached when the code under test is broken


class Gate:
    """A remove function that records what it removes and holds each removal until let go."""

    def __init__(self, fail: set[int] | None = None) -> None:
        self.removed: list[int] = []
        self.started = threading.Semaphore(0)
        self.go = threading.Semaphore(0)
        self.fail = fail or set()
        self.threads: set[str] = set()

    def __call__(self, segno: int) -> None:
        self.threads.add(threading.current_thread().name)
        self.started.release()
        assert self.go.acquire(timeout=WAIT)
        if segno in self.fail:
            raise OSError(5, "injected")
        self.removed.append(segno)


def test_a_removal_runs_in_the_background_and_settle_waits_for_it() -> None:
    gate = Gate()
    rm = Remover(gate, str)
    rm.remove(4)  # returns at once although the removal is held
    assert gate.started.acquire(timeout=WAIT)
    assert gate.removed == [] and gate.threads == {"vstor-remover"}
    rm.settle(5)  # another segment: nothing to wait for
    settled = threading.Event()
    waiter = threading.Thread(target=lambda: (rm.settle(4), settled.set()))
    waiter.start()
    assert not settled.wait(0.2)  # still held: settle must not return
    gate.go.release()
    waiter.join(WAIT)
    assert settled.is_set() and gate.removed == [4]
    rm.close()
    assert (rm.done, rm.failed) == (1, 0)


def test_removals_run_in_order_and_close_waits_for_every_one() -> None:
    gate = Gate()
    rm = Remover(gate, str)
    for segno in (7, 8, 9):
        rm.remove(segno)
    closed = threading.Event()
    closer = threading.Thread(target=lambda: (rm.close(), closed.set()))
    closer.start()
    for _ in range(3):
        assert gate.started.acquire(timeout=WAIT)
        assert not closed.is_set()
        gate.go.release()
    closer.join(WAIT)
    assert closed.is_set() and gate.removed == [7, 8, 9] and rm.done == 3


def test_a_failed_removal_is_logged_and_counted_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate(fail={3})
    rm = Remover(gate, lambda s: f"objects of segment {s}")
    with caplog.at_level(logging.WARNING, logger="vstor.store"):
        rm.remove(3)
        rm.remove(6)
        gate.go.release()
        gate.go.release()
        rm.settle()
    assert gate.removed == [6] and (rm.done, rm.failed) == (2, 1)
    assert "journal segment 3 was deleted, but removing its objects failed" in caplog.text
    assert "objects of segment 3 take space" in caplog.text
    rm.close()


def test_after_close_a_removal_runs_in_the_callers_thread() -> None:
    gate = Gate()
    rm = Remover(gate, str)
    rm.close()
    gate.go.release()
    rm.remove(2)
    assert gate.removed == [2] and gate.threads == {threading.current_thread().name}


def test_the_same_segment_twice_settles_after_both() -> None:
    gate = Gate()
    rm = Remover(gate, str)
    rm.remove(1)
    rm.remove(1)  # a delete repeated: both removals run, settle waits for the second too
    assert gate.started.acquire(timeout=WAIT)
    gate.go.release()
    assert gate.started.acquire(timeout=WAIT)
    settled = threading.Event()
    waiter = threading.Thread(target=lambda: (rm.settle(1), settled.set()))
    waiter.start()
    assert not settled.wait(0.2)
    gate.go.release()
    waiter.join(WAIT)
    assert settled.is_set() and gate.removed == [1, 1]
    rm.close()


def test_a_bug_in_a_removal_is_reported_and_does_not_leave_waiters_hanging(caplog: pytest.LogCaptureFixture) -> None:
    def broken(segno: int) -> None:
        raise KeyError(segno)

    rm = Remover(broken, str)
    with caplog.at_level(logging.WARNING, logger="vstor.store"):
        rm.remove(9)
        rm.settle(9)  # returns: the removal ended, badly
    assert (rm.done, rm.failed) == (1, 1) and "(KeyError(9), a bug)" in caplog.text
    rm.close()
