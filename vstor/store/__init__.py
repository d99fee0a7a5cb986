"""The storage engine: a log-structured journal that is also the data store.

An open pool is a :class:`~vstor.store.store.Store`. Writes go to the ``journal`` package
(formats, the writer, segment readers, the header cache, consumers) and the chunk maps of
``maps`` (pure) point into it; ``state`` applies each record, the same code for live I/O,
replay (``recovery``) and ``check``. ``catalog`` holds volumes, groups, snapshots, policies and
compliance locks; ``maintenance`` does GC, compaction, defragmentation and checkpoints in the
background. ``reads`` serves reads; ``adminops`` the admin operations on huge ranges;
``allocation`` says which ranges hold data; ``codec`` encodes frames; ``stats`` counts;
``superblock`` is the pool's identity and layout; ``storeparts`` declares, with their types,
what the Store's parts use of it; the ``backend`` package is where segments, superblock and
checkpoints live (local files or Ceph RADOS); ``migrate`` copies a local pool to RADOS.
"""

from __future__ import annotations

__all__ = ["adminops", "allocation", "backend", "catalog", "check", "codec", "journal", "maintenance", "maps",
           "migrate", "reads", "recovery", "resumeops", "state", "stats", "store", "storeparts", "superblock"]
