"""Background work on an open Store: GC, compaction, defragmentation, checkpoints, space.

``maintloop`` is the thread that ticks on an injected clock; ``reclaim`` decides and runs GC
and compaction and ``moves`` does the Store's GC moves, compaction and segment deletion;
``defrag`` rewrites scattered volumes in logical order when the host is idle; ``steps`` runs
named steps where one failing does not stop the others; ``activity`` tells what the host did
between two ticks; ``checkpoint`` writes and reads the two checkpoint copies; ``space``
accounts for the free space of the filesystem that holds the pool.
"""

from __future__ import annotations

__all__ = ["activity", "checkpoint", "defrag", "maintloop", "moves", "reclaim", "space", "steps"]
