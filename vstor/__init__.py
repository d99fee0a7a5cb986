"""vstor: a user-space virtual block storage array.

Layers (see docs/architecture.md):
  vstor.store    pure-ish storage engine: journal segments, chunk maps, codec, recovery, GC
  vstor.fuse     thin mfusepy adapter exporting volumes as image files
  vstor.control  the per-pool daemon, its lock and its control socket
  vstor.cli      the ``vstor`` admin tool
"""

from __future__ import annotations

__version__ = "0.1.0"
