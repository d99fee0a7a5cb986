"""Where ``pool migrate`` puts the pool files the backend keeps no blob for yet.

One function, :func:`place_other_file`, decides it for every such file: a state file of the
``PoolFiles`` seam (``backend.statefiles.is_state_file``: consumers, pairs, NBD exports,
governance, backup settings, audit log, library inventories...) becomes the destination
backend's blob of the same name, where a RADOS pool reads it; a tape cartridge
(``media/**.tape``) goes to the backend's file area ``media`` (``PoolBackend.file_area``:
striped objects on RADOS); an optical disc image (``media/LIB/[shelf/]BARCODE.sideN.img``) to
the backend's sparse area ``optical`` (``PoolBackend.sparse_file_area``), only its data
extents (``SEEK_DATA``/``SEEK_HOLE``) copied and verified, with its length (its state,
``.sideN.json``, is a state file); every other file (logs) to the destination host's state
directory of the RADOS pool (vstor/store/backend/stub.py), at the same relative path, mode as
at the source. As more files move into the backend, this is
the one place to change. The backup catalog ``backup/catalog.db`` is not placed here: it is a
database in the cluster (catalogcopy.py).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vstor.durable import sync_dir
from vstor.store.backend.base import PoolBackend
from vstor.store.backend.files import DISC_AREA, MEDIA_AREA
from vstor.store.backend.statefiles import is_state_file

__all__ = ["CHUNK", "Placed", "data_extents", "place_other_file"]

CHUNK = 4 << 20  # bytes copied per read
DISC_IMAGE = re.compile(r"media/[^/]+/(shelf/)?[^/.]+\.side\d+\.img")


@dataclass
class Placed:
    """Where a file went (for messages), and how to read it back (the migrate verifies it)."""

    where: str
    read_back: Callable[[], Iterator[bytes]]
    source: Callable[[], Iterator[bytes]] | None = None  # the source in read_back's form (default: its bytes)


def _chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def place_other_file(dest: PoolBackend, state_dir: str, name: str, source: str) -> Placed:
    """Copy the pool file ``source`` (relative name ``name``, with "/") to the destination
    pool, durably, replacing what is there. ``dest`` is the destination's backend, for the
    files routed through it."""
    if is_state_file(name):
        with open(source, "rb") as f:
            dest.put(name, f.read())
        return Placed(dest.where(name), lambda: iter([dest.get(name)]))
    if DISC_IMAGE.fullmatch(name):
        return _to_sparse_area(dest, os.path.join(state_dir, MEDIA_AREA), name[len(MEDIA_AREA) + 1:], source)
    if name.startswith(MEDIA_AREA + "/") and name.endswith(".tape"):
        return _to_file_area(dest, os.path.join(state_dir, MEDIA_AREA), name[len(MEDIA_AREA) + 1:], source)
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


def _to_file_area(dest: PoolBackend, local_dir: str, rel: str, source: str) -> Placed:
    """A cartridge into the ``media`` file area (written, then synced: durable on return)."""
    area = dest.file_area(MEDIA_AREA, local_dir)
    area.delete(rel)  # a resumed migrate may have left part of it
    f = area.open(rel, create=True)
    try:
        pos = 0
        for chunk in _chunks(source):
            f.pwrite(chunk, pos)
            pos += len(chunk)
        f.sync()
    finally:
        f.close()

    def read_back() -> Iterator[bytes]:
        g = area.open(rel)
        try:
            pos, size = 0, g.size()
            while pos < size:
                got = g.pread(min(CHUNK, size - pos), pos)
                if not got:
                    return
                yield got
                pos += len(got)
        finally:
            g.close()
    return Placed(area.describe(rel), read_back)


def data_extents(path: str) -> tuple[list[tuple[int, int]], int]:
    """The (offset, length) extents of a local file that hold data, and its length: its holes
    are skipped (``SEEK_DATA``/``SEEK_HOLE``; a filesystem without them gives one extent)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos, out = os.fstat(fd).st_size, 0, []
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole from pos to the end
                    break
                if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                    return [(0, size)], size
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, end - start))
            pos = end
        return out, size
    finally:
        os.close(fd)


def _pieces(extents: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    for off, length in extents:
        for pos in range(off, off + length, CHUNK):
            yield pos, min(CHUNK, off + length - pos)


def _to_sparse_area(dest: PoolBackend, local_dir: str, rel: str, source: str) -> Placed:
    """A disc image into the sparse ``optical`` area: its data extents written, its length set
    (a hole at the end stays a hole), then synced: durable on return. Verified as the sequence of
    (offset, length, bytes) of the source's extents and the length, so a hole is never read."""
    area = dest.sparse_file_area(DISC_AREA, local_dir)
    extents, size = data_extents(source)
    area.makedirs(os.path.dirname(rel))
    area.delete(rel)  # a resumed migrate may have left part of it
    f = area.open(rel, create=True)
    fd = os.open(source, os.O_RDONLY)
    try:
        for pos, n in _pieces(extents):
            f.pwrite(os.pread(fd, n, pos), pos)
        f.truncate(size)
        f.sync()
    finally:
        os.close(fd)
        f.close()

    def src() -> Iterator[bytes]:
        fd = os.open(source, os.O_RDONLY)
        try:
            for pos, n in _pieces(extents):
                yield b"%d+%d:" % (pos, n) + os.pread(fd, n, pos)
            yield b"length %d" % size
        finally:
            os.close(fd)

    def read_back() -> Iterator[bytes]:
        g = area.open(rel)
        try:
            for pos, n in _pieces(extents):
                yield b"%d+%d:" % (pos, n) + g.pread(n, pos)
            yield b"length %d" % g.size()
        finally:
            g.close()
    return Placed(area.describe(rel), read_back, src)
