"""The local state directory of a pool on RADOS, and the pointer file that makes it one.

A RADOS pool's segments, superblock and checkpoints are objects in Ceph; what is not routed
through the backend yet (control socket, pool lock file, log, consumers, governance, media
and backup files) lives in a local state directory, ``$VSTOR_RADOS_STATE_DIR/CEPHPOOL/PREFIX``
(default under /var/lib/vstor/rados). Its ``rados.json`` (STUB) names the location and how to
reach the cluster; every command given the directory or the rados:// location finds the
backend through it (:func:`backend_for`), so the rest of vstor treats the directory as the
pool. Format: a checked JSON file (vstor/checkedjson.py), version STUB_VERSION, with
``location``, ``ceph_conf``, ``ceph_id`` and, when ``pool init --rados-timeout`` gave one,
``timeout`` (seconds: the client timeout of every RADOS operation of this host's daemon).
"""

from __future__ import annotations

import os

from vstor import checkedjson
from vstor.errors import NotFound
from vstor.faults import NO_FAULTS, Faults
from vstor.store.backend.base import PoolBackend
from vstor.store.backend.local import LocalBackend
from vstor.store.backend.location import is_rados, open_backend, parse_rados
from vstor.store.backend.statefiles import local_files

__all__ = ["STUB", "backend_for", "read_stub", "resolve", "state_dir", "write_stub"]

STUB = "rados.json"
STUB_VERSION = 1
STATE_ENV = "VSTOR_RADOS_STATE_DIR"
DEFAULT_STATE = "/var/lib/vstor/rados"


def state_dir(location: str) -> str:
    """This host's state directory for a rados:// location."""
    loc = parse_rados(location)
    return os.path.join(os.environ.get(STATE_ENV) or DEFAULT_STATE, loc.pool, *loc.prefix.split("/"))


def write_stub(directory: str, location: str, ceph_conf: str | None, ceph_id: str | None,
               timeout: int | None = None) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for sub in ("meta", "log"):
        os.makedirs(os.path.join(directory, sub), mode=0o700, exist_ok=True)
    stub: dict[str, object] = {"location": location, "ceph_conf": os.path.abspath(ceph_conf) if ceph_conf else None,
                               "ceph_id": ceph_id}
    if timeout is not None:  # absent: the default client timeout (rados.backend.DEFAULT_TIMEOUT)
        stub["timeout"] = timeout
    checkedjson.save(local_files(directory), STUB, stub, STUB_VERSION)


def read_stub(directory: str) -> dict | None:
    """The stub of a RADOS pool's state directory, or None for a local pool."""
    if not os.path.exists(os.path.join(directory, STUB)):
        return None
    return checkedjson.load(local_files(directory), STUB, {}, STUB_VERSION,
                            "the state directory no longer says which RADOS pool it serves; run "
                            "'vstor pool init rados://CEPHPOOL/PREFIX --attach' again", private=True)


def resolve(pool: str) -> str:
    """The directory vstor uses for ``pool``: itself, or a rados:// location's state directory."""
    if not is_rados(pool):
        return pool
    directory = state_dir(pool)
    if read_stub(directory) is None:
        raise NotFound(f"{pool} has no state directory on this host ({directory}); run "
                       f"'vstor pool init {pool} --attach --ceph-conf FILE' first")
    return directory


def backend_for(pool: str, faults: Faults = NO_FAULTS) -> PoolBackend:
    """The backend of a pool directory: RADOS if it holds a stub, else its own files."""
    stub = read_stub(pool) if not is_rados(pool) else None
    if is_rados(pool):
        stub = read_stub(resolve(pool))
    if stub is None:
        return LocalBackend(pool, faults)
    return open_backend(stub["location"], stub.get("ceph_conf"), stub.get("ceph_id"), faults, stub.get("timeout"))
