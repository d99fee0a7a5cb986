"""The FUSE export: a thin mfusepy adapter over the Store.

``ops`` exports volumes and snapshot images as fixed-size image files (its open files are the
typed handles of ``handles``), ``media_fs`` the tape and optical drives; ``direct`` lets reads
fill libfuse's buffer in place (``threadstate`` keeps each libfuse thread's Python state
between requests), and ``options`` holds the mount options shared with the
benchmarks' bare passthrough.
"""

from __future__ import annotations

__all__ = ["direct", "handles", "media_fs", "ops", "options", "threadstate"]
