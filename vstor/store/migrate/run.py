"""``vstor pool migrate LOCALDIR rados://CEPHPOOL/PREFIX``: copy a local pool to another
backend, every object verified, the destination's superblock last.

:func:`migrate_pool` (the caller holds the source's pool lock, so no daemon can start on it):

1. the source must be a local pool (not a RADOS pool's state directory) and pass the checks
   of ``pool check`` (vstor/store/check.py); a damaged pool is refused;
2. the destination must be empty: it then gets the marker ``migrate.json`` (exclusive create,
   plan.py), or hold the marker of an unfinished migrate of the same pool and ``resume`` be
   given; an existing pool, another pool's marker or foreign objects are refused;
3. the segments, the checkpoint copies and the other files (copier.py, placement.py), then
   the superblock copy and ``pool.json`` (exclusive create): until that last write the
   location has no ``pool.json`` and refuses to open (superblock.load_superblock_from names the
   marker);
4. the marker is deleted and this host's state directory gets its ``rados.json``
   (backend/stub.py), so every command finds the pool by its rados:// location.

The local pool is left as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from vstor.clock import Clock, SystemClock
from vstor.errors import AlreadyExists, Busy, CorruptData, UsageError
from vstor.faults import NO_FAULTS, Faults
from vstor.store.backend.base import PoolBackend
from vstor.store.backend.local import LocalBackend
from vstor.store.backend.stub import read_stub, write_stub
from vstor.store.migrate.catalogcopy import CATALOG_FILE, SIDE_FILES, copy_catalog
from vstor.store.migrate.copier import Copier, inventory
from vstor.store.migrate.plan import Meter, decode_marker, encode_marker
from vstor.store.superblock import MIGRATE_MARKER, SUPERBLOCK, Superblock, load_key, load_superblock
from vstor.units import format_size

__all__ = ["local_pool", "migrate_pool", "source_problems"]


def source_problems(source: str, sb: Superblock) -> list[str]:
    """What ``pool check`` finds wrong with the local pool ``source`` (empty: clean). With the
    key at the path recorded at init, AES-GCM authentication is verified too."""
    from vstor.store.check import check_pool
    from vstor.store.store import Store
    key = load_key(sb, None) if sb.encrypt and sb.key_file and os.path.exists(sb.key_file) else None
    store = Store(source, sb, key, backend=LocalBackend(source))
    try:
        return check_pool(store).problems
    finally:
        store.journal.close()
        store.backend.close()


def local_pool(source: str) -> Superblock:
    """The superblock of the local pool ``source``; UsageError for a RADOS pool's state directory."""
    stub = read_stub(source)
    if stub is not None:
        raise UsageError(f"{source} is the state directory of the RADOS pool {stub.get('location')}; "
                         "pool migrate copies a local pool")
    return load_superblock(source)


def _check_source(source: str, sb: Superblock) -> None:
    problems = source_problems(source, sb)
    if problems:
        raise CorruptData(f"{source} fails 'pool check' ({len(problems)} problem(s), the first: {problems[0]}); "
                          f"run 'vstor pool check {source}' (and --repair) before migrating it")


def _destination(dest: PoolBackend, sb: Superblock, source: str, state_dir: str, resume: bool) -> str:
    """``fresh``, ``resume`` or ``finish`` (only the marker and the stub left to do), or a refusal."""
    where = dest.describe()
    raw = _marker(dest)
    marker = decode_marker(raw) if raw is not None else None
    ours = marker is not None and marker.get("uuid") == sb.uuid
    if dest.exists(SUPERBLOCK):
        if ours and resume:
            return "finish"
        if ours:
            raise AlreadyExists(f"{where} holds this pool from a migrate that did all but its last step; run "
                                f"'vstor pool migrate {source} {where} --resume' to finish it")
        raise AlreadyExists(f"{where} already holds a vstor pool; choose another PREFIX")
    if raw is not None:
        if not ours:
            src = f" from {marker.get('source')} (pool {marker.get('uuid')})" if marker else ""
            raise AlreadyExists(f"{where} holds an unfinished migrate of another pool{src}; remove its objects "
                                "(namespaces PREFIX and PREFIX/journal) or choose another PREFIX")
        if not resume:
            raise AlreadyExists(f"{where} holds an unfinished migrate of this pool; run 'vstor pool migrate "
                                f"{source} {where} --resume' to finish it")
        return "resume"
    if dest.list_segments() or dest.list_blobs("") or dest.list_blobs("meta/"):
        raise AlreadyExists(f"{where} is not empty but holds no vstor pool; choose another PREFIX")
    if os.path.isdir(state_dir) and os.listdir(state_dir):
        raise AlreadyExists(f"this host already has a state directory for {where} ({state_dir}); "
                            "remove it if no pool is there any more")
    return "fresh"


def _begin(dest: PoolBackend, sb: Superblock, source: str, clock: Clock) -> None:
    """The marker: this location holds a migrate that has not finished."""
    where = dest.describe()
    try:
        dest.create(MIGRATE_MARKER, encode_marker(os.path.abspath(source), sb.uuid, clock.time()))
    except FileExistsError:
        raise Busy(f"another 'pool migrate' to {where} has just begun") from None


def _marker(dest: PoolBackend) -> bytes | None:
    try:
        return dest.get(MIGRATE_MARKER)
    except FileNotFoundError:
        return None


def migrate_pool(source: str, location: str, dest: PoolBackend, state_dir: str, ceph_conf: str | None,
                 ceph_id: str | None, resume: bool = False, faults: Faults = NO_FAULTS,
                 clock: Clock | None = None, emit: Callable[[str], None] = lambda line: None) -> dict:
    """Copy the local pool ``source`` to ``dest`` (the backend of ``location``); ``state_dir`` is
    this host's state directory for it. ``emit`` gets the progress lines. Returns a summary."""
    clock = clock or SystemClock()
    sb = local_pool(source)
    step = _destination(dest, sb, source, state_dir, resume)  # the quick refusals first
    _check_source(source, sb)
    if step == "fresh":
        _begin(dest, sb, source, clock)
    inv = inventory(source)
    meter = Meter(inv.bytes, clock, emit)
    src = LocalBackend(source)
    copier = Copier(src, dest, state_dir, meter, faults, resume=step == "resume")
    try:
        if step != "finish":
            copier.segments(inv.segments)
            for name in inv.blobs:
                copier.blob(name)
            for name in inv.other:
                if name == CATALOG_FILE:  # a database in the cluster (libcephsqlite), not a file
                    copy_catalog(os.path.join(source, CATALOG_FILE), dest, ceph_conf, ceph_id)
                if name == CATALOG_FILE or name in SIDE_FILES:
                    meter.add(os.path.getsize(os.path.join(source, name)))
                else:
                    copier.other(name)
            copier.superblock()
    except OSError as e:  # a cluster or disk error: the destination is unfinished, and says so
        raise OSError(e.errno, f"{e.strerror or e}; the migrate to {dest.describe()} did not finish: "
                               "run it again with --resume") from None
    finally:
        src.close()
    dest.delete(MIGRATE_MARKER)
    write_stub(state_dir, location, ceph_conf, ceph_id)
    rate = meter.done() if step != "finish" else 0.0
    seconds = clock.monotonic() - meter.start
    return {"source": os.path.abspath(source), "pool": location, "uuid": sb.uuid, "state_dir": state_dir,
            "segments": len(inv.segments), "segments_kept": copier.kept, "blobs": len(inv.blobs) + 2,
            "other_files": len(inv.other), "bytes": inv.bytes, "seconds": round(seconds, 3),
            "bytes_per_second": int(rate), "resumed": step != "fresh",
            "summary": f"{format_size(inv.bytes, approx=True)} in {len(inv.segments)} segments, "
                       f"{len(inv.blobs) + 2} blobs and {len(inv.other)} other files"}
