"""The coalescer that gathers small journal appends into one RADOS write (pure part; the
backend's use of it runs in make test-rados: tests/test_rados_backend.py and the suites)."""

from __future__ import annotations

from vstor.store.backend.coalesce import Coalescer

STRIPE = 1 << 20


def test_contiguous_small_appends_come_out_as_one_write_in_order() -> None:
    c = Coalescer(STRIPE, limit=1000)
    pos = 100
    for part in (b"a" * 300, b"b" * 300, b"c" * 300):
        assert c.continues(7, pos, len(part))
        c.add(7, pos, part)
        pos += len(part)
    assert c.holds(7) and not c.holds(8) and len(c) == 900
    assert not c.continues(7, pos, 200), "over the limit: the held bytes go first"
    assert c.take() == (7, 100, b"a" * 300 + b"b" * 300 + b"c" * 300)
    assert c.take() is None and len(c) == 0 and (c.held, c.sent) == (3, 1)


def test_what_does_not_continue_is_not_held() -> None:
    c = Coalescer(STRIPE, limit=1000)
    c.add(7, 0, b"x" * 10)
    assert not c.continues(7, 11, 10), "a gap"
    assert not c.continues(7, 5, 10), "an overlap"
    assert not c.continues(8, 10, 10), "another segment"
    assert not c.continues(7, 10, 1000), "too large to hold"
    assert not c.continues(7, 10, 0)
    assert c.drop(8) == 0 and c.drop(7) == 10 and c.take() is None


def test_nothing_is_held_across_a_stripe_boundary() -> None:
    c = Coalescer(STRIPE, limit=1000)
    assert not c.continues(1, STRIPE - 10, 20), "would span two objects"
    c.add(1, STRIPE - 20, b"y" * 20)
    assert not c.continues(1, STRIPE, 10), "continues the bytes but in the next object"
    assert c.take() == (1, STRIPE - 20, b"y" * 20)
    assert c.continues(1, STRIPE, 10)


def test_a_zero_limit_holds_nothing() -> None:
    assert not Coalescer(STRIPE, limit=0).continues(1, 0, 1)
