"""Backup jobs on media: the on-media format and the drives that carry it.

``tapefile`` (with its private ``_tarstream``) is the format, pure: part headers, tape labels,
a POSIX pax stream with GNU sparse members, optionally AES-GCM sealed (docs/formats.md).
``mediaio`` writes and reads job parts through an emulated tape drive; ``cartridges`` chooses,
loads, spans and unloads the cartridges of one job; ``overlap`` hashes a job's data on a helper
thread.
"""

from __future__ import annotations

__all__ = ["cartridges", "mediaio", "overlap", "tapefile"]
