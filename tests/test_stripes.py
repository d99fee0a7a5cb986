"""stripe_spans (vstor/store/backend/stripes.py): every byte of a range on exactly one stripe,
in order, against a byte-by-byte model."""

from __future__ import annotations

import random

from vstor.store.backend.stripes import stripe_spans


def test_spans_cover_the_range_once_in_order_as_a_byte_model_says() -> None:
    rng = random.Random(3)
    for _ in range(500):
        stripe_bytes = rng.choice([1, 7, 64, 4096])
        pos, length = rng.randrange(0, 5 * stripe_bytes), rng.randrange(0, 4 * stripe_bytes)
        spans = list(stripe_spans(pos, length, stripe_bytes))
        got = [(stripe, off + k, at + k) for stripe, off, at, n in spans for k in range(n)]
        want = [((pos + i) // stripe_bytes, (pos + i) % stripe_bytes, i) for i in range(length)]
        assert got == want
        assert all(0 < n <= stripe_bytes - off for _s, off, _a, n in spans)


def test_an_empty_range_has_no_span_and_a_stripe_boundary_starts_a_new_one() -> None:
    assert list(stripe_spans(10, 0, 4)) == []
    assert list(stripe_spans(4, 8, 4)) == [(1, 0, 0, 4), (2, 0, 4, 4)]
    assert list(stripe_spans(3, 2, 4)) == [(0, 3, 0, 1), (1, 0, 1, 1)]
