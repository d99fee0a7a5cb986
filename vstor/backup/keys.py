"""Backup encryption key ids (POOL/backup/keys.json).

Each backup job records the id of the key it was written with. The keys themselves are never
stored: key N is HKDF-SHA256 of ``root`` (32 bytes the engine derives from the pool's key file)
with info ``b"vstor backup key " + str(N)``. Rotating only adds an id, so every older job stays
readable as long as the pool key does.

Guarantees:
* keys.json holds ids and creation times only, never key material; it carries a checksum and is
  replaced atomically and durably (``atomic_write``), so a crash leaves the old or the new list.
* Ids only grow and are never reused; ``key(n)`` gives the same bytes for the same root forever.
* Calls are serialized by a lock (one process owns the pool).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vstor.clock import Clock
from vstor.durable import atomic_write
from vstor.errors import FormatError, KeyError_, UsageError

FORMAT = "vstor-backup-keys"
VERSION = 1
INFO = b"vstor backup key "
NO_POOL_KEY = "backup encryption needs a pool key: create the pool with --encrypt --key-file"


def _checksum(doc: dict) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


class BackupKeys:
    def __init__(self, path: str, root: bytes | None, clock: Clock) -> None:
        if root is not None and len(root) != 32:
            raise UsageError(f"the backup root key must be 32 bytes, not {len(root)}")
        self.path = path
        self.root = root
        self.clock = clock
        self._lock = threading.Lock()
        self._keys: list[dict] = self._load()

    def _load(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                doc = json.loads(f.read())
        except FileNotFoundError:
            return []
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise FormatError(f"{self.path} is not a backup key list: restore it from a copy of the pool's "
                              "backup directory")
        csum = doc.pop("checksum", None)
        if csum != _checksum(doc):
            raise FormatError(f"{self.path} fails its checksum: restore it from a copy of the pool's backup "
                              "directory")
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise FormatError(f"{self.path} is not a version {VERSION} backup key list: upgrade vstor")
        return [{"id": int(k["id"]), "created": float(k["created"])} for k in doc["keys"]]

    def _save(self, keys: list[dict]) -> None:
        doc = {"format": FORMAT, "version": VERSION, "keys": keys}
        doc["checksum"] = _checksum(doc)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o700, exist_ok=True)
        atomic_write(self.path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
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
