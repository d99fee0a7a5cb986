"""The job's sha256 on helper threads (vstor/backup/media/overlap.py): the same digests as
hashlib, in call order, safe against reused buffers, errors raised to the caller."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from vstor.backup.media import overlap
from vstor.backup.media.overlap import BATCH, HashWorker


def test_digests_match_hashlib_for_any_piece_sizes_and_two_hashes_at_once():
    data = os.urandom(3 * BATCH + 12345)
    cuts = [0, 1, 4096, 256 * 1024 + 7, BATCH, BATCH + 1, 2 * BATCH + 99, len(data)]
    with HashWorker() as w:
        a, b = w.sha256(), w.sha256()
        for s, e in zip(cuts, cuts[1:], strict=False):
            a.update(data[s:e])
            b.update(memoryview(data)[e - 1 : e] if e > s else b"")
        assert a.hexdigest() == hashlib.sha256(data).hexdigest()
        assert b.hexdigest() == hashlib.sha256(bytes(data[e - 1] for e in cuts[1:])).hexdigest()
        assert w.sha256().hexdigest() == hashlib.sha256().hexdigest()


def test_a_writable_buffer_reused_after_update_does_not_change_the_digest():
    buf = bytearray(b"x" * 1000)
    with HashWorker() as w:
        h = w.sha256()
        h.update(buf)  # held in the batch, not yet hashed
        buf[:] = b"y" * 1000
        h.update(memoryview(buf))
        buf[:] = b"z" * 1000
        assert h.hexdigest() == hashlib.sha256(b"x" * 1000 + b"y" * 1000).hexdigest()


def test_a_thread_error_reaches_the_next_call(monkeypatch):
    def broken(h, batch):
        raise MemoryError("no room to hash")

    monkeypatch.setattr(overlap, "_feed", broken)
    with HashWorker() as w:
        h = w.sha256()
        h.update(bytes(BATCH))  # a whole batch: sent now; the error surfaces at the next send
        h.update(b"more")
        with pytest.raises(MemoryError, match="no room"):
            h.hexdigest()
        g = w.sha256()
        g.update(bytes(BATCH))
        with pytest.raises(MemoryError, match="no room"):
            g.update(bytes(BATCH))


def test_closing_waits_for_the_threads():
    with HashWorker() as w:
        h = w.sha256()
        h.update(bytes(BATCH))
    assert not [t for t in threading.enumerate() if t.name.startswith("vstor-hash")]
