"""Small JSON state files with a version and a checksum (governance and compliance state).

Guarantee: ``save`` replaces the file atomically and durably (``durable.atomic_write``, mode
0600); ``load`` returns the document only if its ``version`` is the expected one and its
``checksum`` (sha256 hex of the canonical JSON without ``checksum``) matches and the file is
byte for byte the form ``save`` writes, else raises
CorruptData naming the file and what its damage means; a missing file gives ``empty``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat

from vstor.durable import atomic_write
from vstor.errors import CorruptData

__all__ = ["checksum", "load", "save"]


def checksum(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load(path: str, empty: dict, version: int, consequence: str, private: bool = False) -> dict:
    """The verified document at ``path`` (a copy of ``empty`` when there is none). ``private``
    makes the file owner-only again if something widened it."""
    try:
        with open(path, "rb") as f:
            if private and stat.S_IMODE(os.fstat(f.fileno()).st_mode) & 0o077:
                os.fchmod(f.fileno(), 0o600)
            raw = f.read()
        doc = json.loads(raw)
    except FileNotFoundError:
        return dict(empty, version=version)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("checksum") != checksum(doc) or doc.get("version") != version \
            or _encode(doc) != raw:  # the form save writes, byte for byte: the checksum cannot see spacing
        raise CorruptData(f"{path} is damaged (checksum, version or form): {consequence}")
    return doc


def save(path: str, doc: dict, version: int) -> None:
    doc = dict(doc, version=version)
    doc["checksum"] = checksum(doc)
    atomic_write(path, _encode(doc), mode=0o600)


def _encode(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, indent=1).encode()
