"""Backup encryption key ids (POOL/backup/keys.json).

Each backup job records the id of the key it was written with. The keys themselves are never
stored: key N is HKDF-SHA256 of ``root`` (32 bytes the engine derives from the pool's key file)
with info ``b"vstor backup key " + str(N)``. Rotating only adds an id, so every older job stays
readable as long as the pool key does.

Guarantees:
* keys.json holds ids and creation times only, never key material; it is sealed (a checksum,
  vstor/checkedjson.py) and is a pool state file (vstor/store/backend/statefiles.py) replaced
  atomically and durably, so a crash leaves the old or the new list.
* Ids only grow and are never reused; ``key(n)`` gives the same bytes for the same root forever.
* Calls are serialized by a lock (one process owns the pool).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vstor.checkedjson import BadSeal, Seal
from vstor.clock import Clock
from vstor.errors import FormatError, KeyError_, UsageError

if TYPE_CHECKING:
    from vstor.store.backend.statefiles import PoolFiles

FORMAT = "vstor-backup-keys"
VERSION = 1
INFO = b"vstor backup key "
NO_POOL_KEY = "backup encryption needs a pool key: create the pool with --encrypt --key-file"


KEYS_FILE = "keys.json"  # among the pool's backup state files
SEAL = Seal("sha256", indent=1, newline=True)  # sha256 of the sorted JSON (default separators)


class BackupKeys:
    def __init__(self, files: PoolFiles, root: bytes | None, clock: Clock) -> None:
        """``files``: the pool's ``backup`` state files (vstor/store/backend/statefiles.py)."""
        if root is not None and len(root) != 32:
            raise UsageError(f"the backup root key must be 32 bytes, not {len(root)}")
        self.files = files
        self.root = root
        self.clock = clock
        self._lock = threading.Lock()
        self._keys: list[dict] = self._load()

    def _load(self) -> list[dict]:
        raw = self.files.read(KEYS_FILE)
        if raw is None:
            return []
        where = self.files.where(KEYS_FILE)
        try:
            doc = SEAL.unseal(raw)
        except BadSeal as e:
            if e.kind == "json":
                raise FormatError(f"{where} is not a backup key list: restore it from a copy of the pool's "
                                  "backup directory") from None
            raise FormatError(f"{where} fails its checksum (or is not in the form vstor writes): restore it "
                              "from a copy of the pool's backup directory") from None
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise FormatError(f"{where} is not a version {VERSION} backup key list: upgrade vstor")
        return [{"id": int(k["id"]), "created": float(k["created"])} for k in doc["keys"]]

    def _save(self, keys: list[dict]) -> None:
        self.files.write(KEYS_FILE, SEAL.seal({"format": FORMAT, "version": VERSION, "keys": keys}))
        self._keys = keys

    def _need_root(self) -> bytes:
        if self.root is None:
            raise UsageError(NO_POOL_KEY)
        return self.root

    def _add(self) -> int:
        new_id = int(max((k["id"] for k in self._keys), default=0)) + 1
        self._save([*self._keys, {"id": new_id, "created": self.clock.time()}])
        return new_id

    def current(self) -> int:
        """The id new jobs are written with; creates key id 1 on first use."""
        with self._lock:
            self._need_root()
            return self._keys[-1]["id"] if self._keys else self._add()

    def rotate(self) -> int:
        """Start a new key id and return it; older ids stay usable for reading."""
        with self._lock:
            self._need_root()
            return self._add()

    def rotate_if_older(self, seconds: float) -> int | None:
        """Rotate when the current key is at least ``seconds`` old; the new id, or None when no
        rotation was due. With no key yet, key id 1 is created and returned."""
        with self._lock:
            self._need_root()
            if not self._keys or self.clock.time() - self._keys[-1]["created"] >= seconds:
                return self._add()
            return None

    def key(self, key_id: int) -> bytes:
        """The 32-byte key of ``key_id``; KeyError_ for an id this pool never made."""
        with self._lock:
            root = self._need_root()
            if not any(k["id"] == key_id for k in self._keys):
                raise KeyError_(f"this job was written with key id {key_id}, which this pool's key does not "
                                "know: restore it with the pool (and keys.json) it was written from")
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INFO + str(key_id).encode()).derive(root)

    def listing(self) -> list[dict]:
        """[{"id", "created", "current"}] oldest first."""
        with self._lock:
            last = self._keys[-1]["id"] if self._keys else None
            return [{**k, "current": k["id"] == last} for k in self._keys]
