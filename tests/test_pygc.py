"""GcPolicy: long-lived objects leave the cyclic collector's walk, cycles are still collected.

Driven by a ManualClock and direct ``tick()`` calls; every test gives the interpreter's
collector back in its original state, frozen generation emptied.
"""

from __future__ import annotations

import gc
import weakref

import pytest

from vstor.clock import ManualClock
from vstor.control.host.pygc import GcPolicy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _cycle() -> weakref.ref:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def policy(clock):
    gc.unfreeze()
    p = GcPolicy(clock, freeze_every=10.0, full_every=100.0)
    try:
        yield p
    finally:
        p.stop()
        assert gc.get_freeze_count() == 0


def test_first_tick_freezes_the_live_objects(policy):
    kept = [Node() for _ in range(1000)]
    policy.tick()
    assert policy.freezes == 1
    assert gc.get_freeze_count() >= len(kept)
    ids = {id(o) for o in gc.get_objects()}
    assert not ids & {id(o) for o in kept}, "frozen objects are still in the collector's generations"
    # Frozen objects that die leave the permanent generation, so the count can only fall
    # between two readings (no freeze happens here); the reported figure lies between them.
    before = gc.get_freeze_count()
    reported = policy.stats()["frozen_objects"]
    after = gc.get_freeze_count()
    assert after <= reported <= before


def test_freeze_cadence(policy, clock):
    policy.tick()
    clock.advance(9.0)
    policy.tick()
    assert policy.freezes == 1, "froze again before freeze_every passed"
    clock.advance(1.0)
    policy.tick()
    assert policy.freezes == 2
    policy.tick()
    assert policy.freezes == 2


def test_frozen_cycle_survives_until_the_full_pass(policy, clock):
    ref = _cycle()
    policy.tick()  # the cycle is alive here, so it is frozen
    gc.collect()
    assert ref() is not None, "a frozen cycle must be out of reach of ordinary collections"
    clock.advance(50.0)
    policy.tick()
    gc.collect()
    assert ref() is not None and policy.full_passes == 0
    clock.advance(50.0)
    policy.tick()  # full_every has passed: unfreeze, collect, freeze
    assert policy.full_passes == 1
    assert ref() is None, "the full pass did not collect the cycle"
    assert policy.stats()["full_ms_max"] >= 0.0


def test_young_cycles_are_collected_as_usual(policy):
    policy.tick()
    ref = _cycle()  # made after the freeze: the normal collector handles it
    gc.collect()
    assert ref() is None


def test_start_times_automatic_collections_and_stop_restores(policy):
    policy.freeze_every = policy.full_every = 3600.0  # the thread ticks once, then waits
    policy.clock = _BlockingClock()
    policy.start()
    assert policy.freezes == 1 and gc.get_freeze_count() > 0
    gc.collect()  # the callback sees start and stop of this collection
    assert policy.stats()["auto_collections"] >= 1
    policy.stop()
    assert gc.get_freeze_count() == 0
    assert policy._on_collect not in gc.callbacks


class _BlockingClock(ManualClock):
    """A ManualClock whose wait blocks until the event is set, so the thread does not spin."""

    def wait(self, event, timeout: float) -> bool:
        return event.wait()
