"""lz4 with an early abort: stop trying on data that does not compress, and probe now and then.

Pure: bytes in, bytes out, no I/O. The store's frame codec and the tape cartridge use it.

lz4 is fast on random bytes (about 10 µs per 64 KiB on the development VM) but slow on data
with many short matches that save nothing: fio's write buffers take 50-70 µs per 64 KiB and
shrink by 2%, which halved a compressed pool's sequential write (docs/benchmarks.md §1, session
15). ZFS aborts lz4 early for the same reason. The gate:

- compresses a block and returns the result only if it saves at least ``min_saving(len)``
  bytes, else None: the caller stores the block as it is;
- after ``misses`` blocks in a row that saved too little, returns None for the next ``skip``
  blocks without trying, then tries one again; if that one saves too little too, it skips
  the next ``skip`` at once;
- any block that compresses well enough reopens it fully.

:meth:`Lz4Gate.compress_always` tries every block and leaves the gate alone: the store's GC and
compaction use it, so data that was compressed when written stays compressed when moved,
whatever the host is writing meanwhile.

Guarantee: the gate only decides whether lz4 is tried. A block is always either its lz4 block
output (saving at least ``min_saving``) or None, so what a caller stores is the same as without
the gate, except that skipped blocks are stored as they are.

Thread safety: the counters change without a lock. Threads racing on them can lose an update,
which changes only how many blocks are tried, never a block's bytes.
"""

from __future__ import annotations

import lz4.block

MISSES = 8  # blocks in a row that did not compress enough before the gate closes
SKIP = 64  # blocks stored without trying once it has closed


class Lz4Gate:
    def __init__(self, saving_divisor: int = 0, misses: int = MISSES, skip: int = SKIP) -> None:
        """Keep lz4's output when it saves at least len/``saving_divisor`` bytes (at least one
        byte; 0: any saving at all)."""
        self.saving_divisor = saving_divisor
        self.misses = misses
        self.skip = skip
        self._missed = 0
        self._skipping = 0
        self.tried = 0  # blocks compressed (approximate under concurrency)
        self.skipped = 0  # blocks passed over while the gate was closed

    def min_saving(self, n: int) -> int:
        return max(1, n // self.saving_divisor) if self.saving_divisor else 1

    def compress_always(self, data: bytes | memoryview) -> bytes | None:
        """As :meth:`compress`, but tried whatever the gate's state, which it leaves alone: for
        a caller whose data is not part of the stream the gate watches."""
        packed = lz4.block.compress(data, store_size=False)
        return packed if len(packed) <= len(data) - self.min_saving(len(data)) else None

    def compress(self, data: bytes | memoryview) -> bytes | None:
        """lz4 block output of ``data`` (no size prefix) if it is worth keeping, else None."""
        if self._skipping:
            self._skipping -= 1
            self.skipped += 1
            return None
        self.tried += 1
        packed = self.compress_always(data)
        if packed is not None:
            self._missed = 0
            return packed
        self._missed += 1
        if self._missed >= self.misses:
            self._skipping = self.skip
            self._missed = self.misses - 1  # one more miss after the skip closes it again
        return None
