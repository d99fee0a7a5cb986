"""vstor: a user-space virtual block storage array.

One daemon per pool exposes thin, journaled volumes as image files through FUSE. The layers
(docs/architecture.md): ``store`` (the journal that is also the data store, chunk maps,
snapshots, recovery, GC), ``fuse`` (the mfusepy adapter), ``control`` (the daemon, its lock and
control socket), ``cli`` (the ``vstor`` tool), ``replication`` (pairs of arrays over TLS),
``media`` (tape and optical libraries), ``backup`` (policies, jobs to media, the catalog,
clients, drills) and ``nbd`` (remote attach). The top-level modules are shared helpers: errors
with exit codes, the injected clock and fault hooks, durable file writes, units.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "backup", "boundedjson", "checkedjson", "cli", "clock", "control", "durable", "errlog",
           "errors", "faults", "fuse", "hooks", "lz4gate", "media", "nbd", "replication", "store", "units"]
