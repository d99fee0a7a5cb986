"""The lz4 early abort (vstor/lz4gate.py) and its use by the frame codec."""

from __future__ import annotations

import os
import random

import lz4.block

from vstor.lz4gate import MISSES, SKIP, Lz4Gate
from vstor.store.codec import FrameCodec
from vstor.store.journal.format import FF_LZ4, FRAME_SIZE

BLOCK = 4096


def _random(rng: random.Random) -> bytes:
    return rng.randbytes(BLOCK)


def _text(rng: random.Random, n: int = BLOCK) -> bytes:
    """Bytes lz4 shrinks by far more than 1/8: words from a small vocabulary."""
    words = [rng.randbytes(6) for _ in range(12)]
    return b"".join(rng.choice(words) for _ in range(n // 6 + 1))[:n]


def test_closes_after_misses_skips_then_probes_once_per_window():
    rng = random.Random(1)
    gate = Lz4Gate()
    results = [gate.compress(_random(rng)) for _ in range(MISSES + SKIP + 1 + SKIP + 1)]
    assert results == [None] * len(results)  # random bytes never compress
    # 8 tried, 64 skipped, 1 probe that missed, 64 skipped at once, 1 more probe.
    assert gate.tried == MISSES + 2
    assert gate.skipped == 2 * SKIP


def test_a_block_that_compresses_reopens_the_gate():
    rng = random.Random(2)
    gate = Lz4Gate()
    for _ in range(MISSES + SKIP):
        gate.compress(_random(rng))
    probe = _text(rng)
    packed = gate.compress(probe)  # the probe after the window
    assert packed is not None
    assert lz4.block.decompress(packed, uncompressed_size=len(probe)) == probe
    tried = gate.tried
    # Fully open again: the next MISSES - 1 misses are all tried, not one.
    for _ in range(MISSES - 1):
        assert gate.compress(_random(rng)) is None
    assert gate.tried == tried + MISSES - 1 and gate.skipped == SKIP


def test_saving_below_the_divisor_is_a_miss():
    rng = random.Random(3)
    sixteenth = rng.randbytes(BLOCK - BLOCK // 16) + bytes(BLOCK // 16)  # lz4 saves about 1/16
    assert len(lz4.block.compress(sixteenth, store_size=False)) < BLOCK
    assert Lz4Gate(saving_divisor=8).compress(sixteenth) is None
    assert Lz4Gate(saving_divisor=0).compress(sixteenth) is not None  # any saving is kept
    assert Lz4Gate(saving_divisor=32).compress(sixteenth) is not None


def test_codec_stores_skipped_frames_as_is_and_reads_them_back():
    rng = random.Random(4)
    codec = FrameCodec(os.urandom(16), True, None)
    frames = [rng.randbytes(FRAME_SIZE) for _ in range(MISSES)]
    text = _text(rng, FRAME_SIZE)
    frames += [text] * (SKIP + 1)  # skipped while closed, then the probe compresses
    entries, stored = codec.encode(b"".join(frames))
    flags = [e.flags & FF_LZ4 for e in entries]
    assert flags == [0] * (MISSES + SKIP) + [FF_LZ4]
    assert codec.lz4.skipped == SKIP
    out = b"".join(bytes(codec.decode(e, b, FRAME_SIZE, None, i, "t"))
                   for i, (e, b) in enumerate(zip(entries, stored, strict=True)))
    assert out == b"".join(frames)


def test_compress_always_ignores_and_keeps_the_gate_state():
    rng = random.Random(5)
    gate = Lz4Gate(saving_divisor=8)
    for _ in range(MISSES):
        gate.compress(_random(rng))
    text = _text(rng)
    assert gate.compress_always(text) is not None  # tried although the gate is closed
    assert gate.compress_always(_random(rng)) is None
    assert gate.compress(text) is None and gate.skipped == 1  # still closed: state untouched


def test_codec_ungated_encode_compresses_while_the_gate_is_closed():
    """GC and compaction re-encode with gated=False: compressed data stays compressed."""
    rng = random.Random(6)
    codec = FrameCodec(os.urandom(16), True, None)
    codec.encode(rng.randbytes(MISSES * FRAME_SIZE))  # host writes close the gate
    text = _text(rng, 2 * FRAME_SIZE)
    entries, _ = codec.encode(text, gated=False)
    assert [e.flags & FF_LZ4 for e in entries] == [FF_LZ4, FF_LZ4]
    entries, _ = codec.encode(text)  # a host write meanwhile is still skipped
    assert [e.flags & FF_LZ4 for e in entries] == [0, 0]
