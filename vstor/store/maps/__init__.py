"""Chunk maps: where each volume's bytes live in the journal. Pure: no I/O.

``chunkmap`` maps a volume's byte ranges to journal records, with copy-on-write sharing between
a volume and its snapshots; ``leaf`` is the unit they share, ``lineage`` how versions of a leaf
descend from one another, ``fragments`` the memory budget for fragmented chunks, ``mapstore``
the serialized form of a set of maps (the checkpoint body) and ``accounting`` space and diffs.
"""

from __future__ import annotations

__all__ = ["accounting", "chunkmap", "fragments", "leaf", "lineage", "mapstore"]
