"""The Store's read path: verified reads of volumes and snapshots.

``path`` is the general path, which reads any range from its mapped pieces (several records,
holes, compressed or encrypted frames, a remote pool) into new bytes or the caller's buffer;
``small`` is the fast path that it tries first for a small read that one record, cached and in
the page cache, holds whole; ``pieces`` serves a large read's whole small records in one pass
before them. ``ahead`` says which range past a reader's sequential stream to
ask for (``Store.prefetch``), for the NBD server and backup jobs alike.
"""

from __future__ import annotations

__all__ = ["ahead", "path", "pieces", "resolved", "small", "sweep", "sweeper"]
