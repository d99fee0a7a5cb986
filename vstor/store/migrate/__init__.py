"""``vstor pool migrate``: a local pool copied to another backend (a RADOS pool), verified.

``plan`` (pure) classifies the pool's files and holds the in-progress marker's format and the
progress meter; ``copier`` copies segments, blobs and other files through the backends and
reads each back to compare its sha256; ``placement`` is the one place that decides where each
of the pool's other files goes (a blob, the cartridge file area, the state directory);
``catalogcopy`` puts the backup catalog into the cluster's SQLite (libcephsqlite); ``run``
checks the source and the destination and puts the steps in order (``pool.json`` last).
"""

from __future__ import annotations

__all__ = ["catalogcopy", "copier", "placement", "plan", "run"]
