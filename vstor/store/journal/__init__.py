"""The journal, which is also the data store: its formats, its writer and its readers.

``format`` holds the on-disk formats of segments and records (pure); ``writer`` appends records
to numbered segment files with group commit (``groupcommit``: the gate in front of its flush;
``tailspace``: the mapped window, reused files and prepared space at the tail); ``segfiles``
lists, sizes, cuts and deletes the segments; ``segread`` reads verified headers and data and
``segscan`` scans segments; ``hcache`` caches record headers and frame tables; ``consumers``
keeps the durable positions of named journal readers (replication, backup) and reads records in
order; ``outage`` says which failures of a remote backend suspend the journal, and ``resume``
continues it in a new segment that seals the old one once the backend answers again;
``prewrite`` decides when the writer writes the space ahead of its tail first (dense syncs) and
runs that in a thread of its own.
"""

from __future__ import annotations

__all__ = ["consumers", "format", "groupcommit", "hcache", "outage", "prewrite", "resume", "segfiles", "segread",
           "segscan", "tailspace", "writer"]
