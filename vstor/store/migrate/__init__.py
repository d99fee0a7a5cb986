"""``vstor pool migrate``: a local pool copied to another backend (a RADOS pool), verified.

``plan`` (pure) classifies the pool's files and holds the in-progress marker's format and the
progress meter; ``copier`` copies segments, blobs and other files through the backends and
reads each back to compare its sha256; ``statefiles`` is the one place that decides where the
files the backend keeps no blob for go; ``run`` checks the source and the destination and
puts the steps in order (the destination's ``pool.json`` last); ``catalogcopy`` puts the
backup catalog into the cluster's SQLite (libcephsqlite).
"""

from __future__ import annotations

__all__ = ["catalogcopy", "copier", "plan", "run", "statefiles"]
