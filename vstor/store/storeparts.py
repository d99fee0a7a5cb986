"""What the Store's parts (readpath, maintenance and adminops mixins) use of the Store. Declarations only.

The Store (store.py) is composed of its core and three mixins: the read path, maintenance (GC
moves, compaction, checkpoints) and admin operations (shrink, delete, trim of huge ranges).
Each mixin reaches attributes and methods the core provides; this base declares them once,
with their real types, so a type checker checks every use. Nothing here runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vstor.clock import Clock
    from vstor.faults import Faults
    from vstor.store.backend.base import PoolBackend
    from vstor.store.catalog.volumes import Volume
    from vstor.store.codec import FrameCodec
    from vstor.store.journal.consumers import Consumers
    from vstor.store.journal.format import FrameEntry
    from vstor.store.journal.hcache import CachedRecord, HeaderCache
    from vstor.store.journal.writer import Journal
    from vstor.store.state import PoolState
    from vstor.store.stats import Counters
    from vstor.store.superblock import Superblock

__all__ = ["StoreParts"]


class StoreParts:
    _lock: threading.RLock
    _remap_lock: threading.Lock
    _ckpt_lock: threading.Lock
    _reads_done: threading.Condition
    _active_reads: int
    _read_waiters: int
    _hcache: HeaderCache
    state: PoolState
    journal: Journal
    codec: FrameCodec
    stats: Counters
    sb: Superblock
    paths: dict[str, str]
    backend: PoolBackend
    consumers: Consumers
    faults: Faults
    clock: Clock
    ckpt_generation: int
    ckpt_position: tuple[int, int]
    ckpt_older: tuple[int, int]
    ckpt_both: bool
    ckpt_appended: int

    if TYPE_CHECKING:  # provided by the Store's core (store.py) or another part
        def event(self, make: Callable[[PoolState], dict]) -> dict: ...
        def _log_event(self, ev: dict) -> None: ...
        def _check_fence(self, vid: int) -> None: ...
        def _append(self, rtype: int, group: int, vid: int, seq: int, offset: int, length: int,
                    entries: list[FrameEntry], bodies: list, use_reserve: bool = False,
                    reserved: bool = False, sums: bytes | None = None) -> int: ...
        def _header(self, loc: int, nowait: bool = False) -> CachedRecord: ...
        def _volume(self, vid: int) -> Volume: ...
        def _read_extent(self, lineage: tuple[int, ...] | None, s: int, e: int, loc: int,
                         into: memoryview | None = None) -> bytes | memoryview: ...
        def done_reading(self) -> None: ...
        def wait_for_reads(self) -> None: ...
