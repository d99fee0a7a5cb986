"""Tape and optical library emulation: libraries, slots, drives and cartridges.

``mediatypes``, ``library`` and ``tapedrive`` are pure state and st/mt semantics; ``tapeformat``
is the cartridge file format and ``cartridge`` its crash-safe file; ``optical`` is one side of a
disc. ``manager`` (with ``drives`` and ``mailslots``) persists the pool's libraries and opens loaded
media for the FUSE adapter (vstor.fuse.media_fs).
"""

from __future__ import annotations

__all__ = ["cartridge", "drives", "library", "mailslots", "manager", "mediatypes", "optical", "tapedrive",
           "tapeformat"]
