"""The storage engine: a log-structured journal that is also the data store.

An open pool is a :class:`~vstor.store.store.Store`. Writes go to the journal (``journal``,
record formats in ``format``, frames by ``codec``) and the chunk maps (``chunkmap``, ``leaf``,
``lineage``, ``fragments``: pure) point into it; ``state`` applies each record, the same code
for live I/O, replay (``recovery``) and ``check``. ``checkpoint``/``mapstore`` persist the
maps; ``reclaim``, ``maintenance``, ``maintloop`` and ``steps`` do GC and compaction in the
background, and ``defrag`` puts scattered volumes back in logical order. ``catalog``,
``volumes``, ``snapshots``, ``policy`` and ``compliance`` hold groups, snapshots and locks;
``readpath``, ``segread`` and ``hcache`` serve reads; ``superblock`` is the pool's identity and
layout. ``storeparts`` declares, with their types, what the read-path, maintenance and
admin-operation parts use of the Store. The ``backend`` package is where segments, superblock
and checkpoints live (local files or Ceph RADOS).
"""

from __future__ import annotations

__all__ = ["accounting", "adminops", "allocation", "backend", "catalog", "check", "checkpoint", "chunkmap", "codec",
           "compliance", "consumers", "defrag", "format", "fragments", "hcache", "journal", "leaf", "lineage",
           "maintenance", "maintloop", "mapstore", "policy", "policyrun", "readpath", "reclaim", "recovery",
           "segread", "snapshots", "space", "state", "stats", "steps", "store", "storeparts", "superblock", "volumes"]
