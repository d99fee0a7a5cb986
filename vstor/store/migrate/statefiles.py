"""Where ``pool migrate`` puts the pool files the backend keeps no blob for yet.

One function, :func:`place_other_file`, decides it for every such file (consumers, governance,
pair, NBD, media, backup and log files): today the destination host's state directory of the
RADOS pool (vstor/store/backend/stub.py), at the same relative path, mode as at the source.
When a file moves into the backend (issue 29, "one seam"), this is the one place to change:
``dest.put(name, ...)`` for that name, and a ``read_back`` that ``dest.get``s it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vstor.durable import sync_dir
from vstor.store.backend.base import PoolBackend

__all__ = ["CHUNK", "Placed", "place_other_file"]

CHUNK = 4 << 20  # bytes copied per read


@dataclass
class Placed:
    """Where a file went (for messages), and how to read it back (the migrate verifies it)."""

    where: str
    read_back: Callable[[], Iterator[bytes]]


def _chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def place_other_file(dest: PoolBackend, state_dir: str, name: str, source: str) -> Placed:
    """Copy the pool file ``source`` (relative name ``name``, with "/") to the destination
    pool: durably (temporary file, fsync, rename, directory fsync), replacing what is there.
    ``dest`` is the destination's backend, for files routed through it."""
    del dest  # no state file is routed through the backend yet
    path = os.path.join(state_dir, *name.split("/"))
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    mode = stat.S_IMODE(os.stat(source).st_mode) or 0o600
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        for chunk in _chunks(source):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_dir(os.path.dirname(path))
    return Placed(path, lambda: _chunks(path))
