"""The pool superblock ``POOL/pool.json`` and the pool's directory layout.

The superblock is JSON with a version and an xxh3 checksum over its canonical form; it is
written once at ``pool init`` (atomic replace), together with an identical second copy
``POOL/meta/superblock.copy``, and read at every open: a damaged or missing first copy is
logged and the second used; ``pool check`` reports either, and ``--repair`` rewrites the bad
one from the good one. It records the settings fixed for the pool's life and a key *check
value*, never the key. Both copies are 0600 and the journal, meta and log directories 0700:
a pool's metadata is its owner's only.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass

import xxhash

from vstor.errors import AlreadyExists, FormatError, KeyError_, NotFound, UsageError
from vstor.store.backend.base import PoolBackend
from vstor.store.backend.local import LocalBackend
from vstor.store.journal.format import FRAME_SIZE, SEGMENT_HEADER_SIZE

# checkpoint, codec (cryptography) and state are imported where used: every CLI command
# reads the superblock, and most of them only to find the daemon's socket.

log = logging.getLogger("vstor.superblock")

SUPERBLOCK = "pool.json"
SUPERBLOCK_COPY = "superblock.copy"  # in meta/
COPY_BLOB = "meta/" + SUPERBLOCK_COPY  # the blob names of both copies (vstor/store/backend/)
MIGRATE_MARKER = "migrate.json"  # blob of a 'pool migrate' that has not finished (vstor/store/migrate/)
POOL_FORMAT = "vstor-pool"
POOL_VERSION = 1
DEFAULT_CHUNK = 512 * 1024
MIN_CHUNK, MAX_CHUNK = FRAME_SIZE, 4 * 1024 * 1024
# The journal segment size is fixed at init. By default it is DEFAULT_SEGMENT, or less on a
# small filesystem: at most 1/SEGMENTS_PER_FS of it, so that the space reserve (two segments
# and 8 MiB, see Store) stays near 3% of the filesystem. Larger segments mean fewer restarts
# of the kernel's read-ahead in a sequential read (docs/benchmarks.md §1).
DEFAULT_SEGMENT = 256 * 1024 * 1024
MIN_SEGMENT, MAX_SEGMENT = 4 * MAX_CHUNK, 1 << 32
SEGMENTS_PER_FS = 64


@dataclass
class Superblock:
    uuid: str
    chunk_size: int
    segment_size: int
    compress: str  # "lz4" or "none"
    encrypt: bool
    key_check: str
    key_file: str  # a hint for array start; the key itself is never stored
    created: float
    format: str = POOL_FORMAT
    version: int = POOL_VERSION

    @property
    def uuid_bytes(self) -> bytes:
        return uuid.UUID(self.uuid).bytes


def layout(pool: str) -> dict[str, str]:
    return {
        "superblock": os.path.join(pool, SUPERBLOCK),
        "journal": os.path.join(pool, "journal"),
        "meta": os.path.join(pool, "meta"),
        "log": os.path.join(pool, "log"),
        "lock": os.path.join(pool, "lock"),
        "socket": os.path.join(pool, "control.sock"),
    }


def _checksum(fields: dict) -> str:
    return xxhash.xxh3_64_hexdigest(json.dumps(fields, sort_keys=True).encode())


def read_key_file(path: str) -> bytes:
    from vstor.store.codec import KEY_BYTES
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise NotFound(f"key file {path} does not exist") from None
    except OSError as e:
        raise KeyError_(f"cannot read key file {path}: {e.strerror}") from None
    if len(data) < KEY_BYTES:
        raise KeyError_(f"key file {path} is too short: it needs at least {KEY_BYTES} bytes")
    return data


def create_key_file(path: str) -> None:
    from vstor.store.codec import KEY_BYTES
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(KEY_BYTES))
        f.flush()
        os.fsync(f.fileno())


def auto_segment_size(fs_bytes: int) -> int:
    """The default segment size for a pool on a filesystem of ``fs_bytes``: the largest power
    of two at most ``fs_bytes / SEGMENTS_PER_FS``, between MIN_SEGMENT and DEFAULT_SEGMENT."""
    share = max(fs_bytes // SEGMENTS_PER_FS, 1)
    return max(MIN_SEGMENT, min(DEFAULT_SEGMENT, 1 << (share.bit_length() - 1)))


def filesystem_bytes(path: str) -> int:
    """The size of the filesystem that holds ``path``, or would hold it once created."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def init_pool(pool: str, chunk_size: int = DEFAULT_CHUNK, compress: str = "none", encrypt: bool = False,
              key_file: str | None = None, segment_size: int | None = None) -> tuple[Superblock, bool]:
    """Create a pool directory. Returns the superblock and whether a new key file was made.
    ``segment_size`` None picks :func:`auto_segment_size` for the pool's filesystem."""
    if segment_size is None:
        segment_size = auto_segment_size(filesystem_bytes(pool))
    check_settings(chunk_size, compress, encrypt, key_file, segment_size)
    paths = layout(pool)
    if os.path.exists(paths["superblock"]):
        raise AlreadyExists(f"{pool} already holds a vstor pool")
    if os.path.isdir(pool) and os.listdir(pool):
        raise UsageError(f"{pool} is not empty; choose an empty or new directory")
    os.makedirs(pool, exist_ok=True)
    sb, created_key = new_superblock(chunk_size, compress, encrypt, key_file, segment_size)
    for d in ("journal", "meta", "log"):
        os.makedirs(paths[d], mode=0o700, exist_ok=True)  # owner only, like pool.json
    format_backend(LocalBackend(pool), sb)
    return sb, created_key


def check_settings(chunk_size: int, compress: str, encrypt: bool, key_file: str | None, segment_size: int) -> None:
    """UsageError for settings no pool can have."""
    if chunk_size & (chunk_size - 1) or not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise UsageError(f"invalid chunk size {chunk_size}: use a power of two from 64K to 4M")
    if compress not in ("lz4", "none"):
        raise UsageError(f"invalid compression {compress!r}: use lz4 or none")
    if not MIN_SEGMENT <= segment_size <= MAX_SEGMENT:
        raise UsageError("invalid segment size: use 16M to 4G, or auto")
    if encrypt and not key_file:
        raise UsageError("--encrypt needs --key-file FILE (it is created if it does not exist)")


def new_superblock(chunk_size: int, compress: str, encrypt: bool, key_file: str | None,
                   segment_size: int) -> tuple[Superblock, bool]:
    """A new pool's superblock (checked settings), and whether a new key file was made."""
    from vstor.store.codec import key_check_value
    check_settings(chunk_size, compress, encrypt, key_file, segment_size)
    created_key = False
    key_check = ""
    pool_uuid = uuid.uuid4()
    if encrypt:
        assert key_file is not None
        key_file = os.path.abspath(key_file)
        if not os.path.exists(key_file):
            create_key_file(key_file)
            created_key = True
        key_check = key_check_value(read_key_file(key_file), pool_uuid.bytes)
    sb = Superblock(str(pool_uuid), chunk_size, segment_size, compress, encrypt, key_check,
                    key_file or "", time.time())
    return sb, created_key


def init_backend_pool(backend: PoolBackend, chunk_size: int = DEFAULT_CHUNK, compress: str = "none",
                      encrypt: bool = False, key_file: str | None = None,
                      segment_size: int | None = None) -> tuple[Superblock, bool]:
    """:func:`init_pool` on a backend without a local directory (a RADOS pool); ``segment_size``
    None is DEFAULT_SEGMENT."""
    if backend.exists(SUPERBLOCK):
        raise AlreadyExists(f"{backend.describe()} already holds a vstor pool")
    if backend.exists(MIGRATE_MARKER):
        raise AlreadyExists(f"{backend.describe()} holds a 'vstor pool migrate' that did not finish; finish it "
                            "with --resume, or choose another PREFIX")
    sb, created_key = new_superblock(chunk_size, compress, encrypt, key_file, segment_size or DEFAULT_SEGMENT)
    format_backend(backend, sb)
    return sb, created_key


def format_backend(backend: PoolBackend, sb: Superblock) -> None:
    """Write a new pool's superblock (copy first, then the main one) and both initial
    checkpoint copies through its backend. The main superblock is created exclusively, so
    two inits of one location cannot both succeed."""
    raw = encode_superblock(sb)
    if backend.exists(SUPERBLOCK):
        raise AlreadyExists(f"{backend.describe()} already holds a vstor pool")
    backend.put(COPY_BLOB, raw)
    try:
        backend.create(SUPERBLOCK, raw)
    except FileExistsError:
        raise AlreadyExists(f"{backend.describe()} already holds a vstor pool") from None
    write_initial_checkpoint(backend, sb)


def write_initial_checkpoint(backend: PoolBackend, sb: Superblock) -> None:
    """Both checkpoint copies of an empty pool, so that a pool without one is always damaged."""
    from vstor.store.maintenance.checkpoint import CheckpointData, write_checkpoint
    from vstor.store.state import PoolState
    empty = PoolState(sb.chunk_size)
    write_checkpoint(backend, sb.uuid_bytes, CheckpointData(1, 1, SEGMENT_HEADER_SIZE, 1, empty.meta_json(),
                                                             empty.maps_blob()), both=True)


def encode_superblock(sb: Superblock) -> bytes:
    fields = asdict(sb)
    fields["checksum"] = _checksum(asdict(sb))
    return (json.dumps(fields, indent=2, sort_keys=True) + "\n").encode()


def copy_path(pool: str) -> str:
    """The superblock's second copy, written with it at init and read when it is damaged."""
    return os.path.join(layout(pool)["meta"], SUPERBLOCK_COPY)


def decode_superblock(raw: bytes, path: str) -> Superblock:
    try:
        fields = json.loads(raw)
        if not isinstance(fields, dict):
            raise ValueError("not an object")
    except ValueError as e:
        raise FormatError(f"superblock {path} is unreadable: {e}") from None
    csum = fields.pop("checksum", None)
    if fields.get("format") != POOL_FORMAT:
        raise FormatError(f"{path} is not a vstor superblock")
    if fields.get("version") != POOL_VERSION:
        raise FormatError(f"{path} has pool version {fields.get('version')}; this vstor reads {POOL_VERSION}")
    if csum != _checksum(fields):
        raise FormatError(f"superblock {path} fails its checksum; the pool metadata is damaged")
    try:
        sb = Superblock(**fields)
    except TypeError as e:
        raise FormatError(f"superblock {path} has unexpected fields: {e}") from None
    if encode_superblock(sb) != raw:  # written only by encode_superblock: any other byte is damage
        raise FormatError(f"superblock {path} is not in the form vstor writes; the pool metadata is damaged")
    return sb


def _backend(pool: str) -> PoolBackend:
    """The pool's backend: its own files, or RADOS for a state directory with a stub."""
    from vstor.store.backend.stub import backend_for
    return backend_for(pool)


def _read_one(backend: PoolBackend, name: str) -> Superblock | str | None:
    """The superblock in blob ``name``, what is wrong with it, or None if there is none."""
    path = backend.where(name)
    try:
        return decode_superblock(backend.get(name), path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"superblock {path} cannot be read: {e.strerror}"
    except FormatError as e:
        return str(e)


def load_superblock(pool: str) -> Superblock:
    """The superblock, from its second copy when the first is damaged or missing (logged)."""
    with _backend(pool) as be:
        return load_superblock_from(be)


def load_superblock_from(be: PoolBackend) -> Superblock:
    """:func:`load_superblock` through a pool's backend."""
    main, copy = _read_one(be, SUPERBLOCK), _read_one(be, COPY_BLOB)
    if isinstance(main, Superblock):
        return main
    if main is None and be.exists(MIGRATE_MARKER):  # pool.json is the last object a migrate writes
        raise NotFound(f"{be.describe()} holds a 'vstor pool migrate' that did not finish; run it again with "
                       "--resume to finish it")
    if isinstance(copy, Superblock):
        log.error("%s; using its copy %s ('vstor pool check --repair' rewrites it)",
                  main or f"superblock {be.where(SUPERBLOCK)} is missing", be.where(COPY_BLOB))
        return copy
    if main is None and copy is None:
        raise NotFound(f"{be.describe()} is not a vstor pool (no {SUPERBLOCK}); create one with 'vstor pool init'")
    raise FormatError(main or copy or "")


def superblock_problems(pool: str | PoolBackend) -> list[str]:
    """What is wrong with either copy of the superblock (pool check)."""
    if isinstance(pool, str):
        with _backend(pool) as be:
            return superblock_problems(be)
    be = pool
    main, copy = _read_one(be, SUPERBLOCK), _read_one(be, COPY_BLOB)
    out = [why for why in (main, copy) if isinstance(why, str)]
    if main is None:
        out.append(f"superblock {be.where(SUPERBLOCK)} is missing")
    if copy is None:
        out.append(f"superblock copy {be.where(COPY_BLOB)} is missing")
    if isinstance(main, Superblock) and isinstance(copy, Superblock) and main != copy:
        out.append(f"superblock {be.where(SUPERBLOCK)} and its copy differ")
    return out


def ensure_superblock_copy(pool: str | PoolBackend, sb: Superblock) -> None:
    """Write the second copy for a pool made before it was kept, from ``sb`` as load_superblock
    verified it (no second read of pool.json)."""
    if isinstance(pool, str):
        with _backend(pool) as be:
            return ensure_superblock_copy(be, sb)
    be = pool
    if not be.exists(COPY_BLOB):
        be.put(COPY_BLOB, encode_superblock(sb))
        log.info("wrote the superblock's second copy %s", be.where(COPY_BLOB))


def repair_superblock(pool: str) -> list[str]:
    """Rewrite a damaged or missing copy of the superblock from the valid one. Returns what was done."""
    with _backend(pool) as be:
        return _repair_superblock(be)


def _repair_superblock(be: PoolBackend) -> list[str]:
    main, copy = _read_one(be, SUPERBLOCK), _read_one(be, COPY_BLOB)
    if isinstance(main, Superblock) and isinstance(copy, Superblock):
        return []
    good = main if isinstance(main, Superblock) else copy
    if not isinstance(good, Superblock):
        return []
    bad = COPY_BLOB if good is main else SUPERBLOCK
    be.put(bad, encode_superblock(good))
    return [f"rewrote {be.where(bad)} from the other copy of the superblock"]


def load_key(sb: Superblock, key_file: str | None) -> bytes | None:
    """Return the key material for an encrypted pool, checked against the superblock."""
    from vstor.store.codec import key_check_value
    if not sb.encrypt:
        return None
    path = key_file or sb.key_file
    if not path:
        raise KeyError_("the pool is encrypted: give its key with --key-file FILE")
    material = read_key_file(path)
    if key_check_value(material, sb.uuid_bytes) != sb.key_check:
        raise KeyError_(f"wrong key: {path} is not the key this pool was created with")
    return material
