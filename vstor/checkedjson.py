"""Sealed JSON: small state files that carry a checksum of their own content, read back only
in the exact form vstor writes them.

:class:`Seal` is the one encoder/verifier every such file uses (governance and compliance
state, journal consumer positions, pair files, NBD exports, media library files, backup key
ids). A seal fixes the checksum (sha256 or xxh3-64, hex, over ``json.dumps(content,
sort_keys=True)`` with compact or default separators, ``checksum`` left out) and the written
form (indent, key order, trailing newline), so each file keeps the bytes it always had.
:meth:`Seal.unseal` refuses a document whose checksum does not match *or* whose bytes are not
exactly the ones :meth:`Seal.seal` writes for it (a changed space is damage the checksum of the
parsed content cannot see).

:func:`load` and :func:`save` are the governance form (``STATE``: sha256, compact, indent 1,
a ``version`` field), kept in a pool's state files (``vstor.store.backend.statefiles.PoolFiles``):
``save`` replaces the file atomically and durably (mode 0600 on a local pool, ``write_full``
on RADOS); ``load`` returns the document only if its ``version`` is the expected one and its
seal holds, else raises CorruptData naming the file and what its damage means; a missing file
gives ``empty``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import xxhash

from vstor.errors import CorruptData

if TYPE_CHECKING:
    from vstor.store.backend.statefiles import PoolFiles

__all__ = ["STATE", "BadSeal", "Seal", "checksum", "load", "save"]


class BadSeal(ValueError):
    """Why a sealed document was refused: ``kind`` is "json" (not a JSON object), "checksum"
    or "form" (valid content, other bytes than vstor writes)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(detail or kind)
        self.kind = kind

    def describe(self, path: str) -> str:
        """What is wrong with the document at ``path``, for an error line (the caller adds
        what to do about it)."""
        if self.kind == "checksum":
            return f"{path} fails its checksum"
        if self.kind == "form":  # written only by Seal.seal: any other byte is damage
            return (f"{path} is not in the form vstor writes (a damaged byte its checksum cannot see, "
                    "like changed spacing)")
        return f"{path} is unreadable: {self}"


@dataclass(frozen=True)
class Seal:
    digest: str  # "sha256" or "xxh3"
    compact: bool = False  # checksum over separators (",", ":") instead of json's default
    indent: int | None = None
    sort_keys: bool = True  # of the written form (the checksum always sorts)
    newline: bool = False  # a final "\n"

    def checksum(self, content: dict) -> str:
        body = {k: v for k, v in content.items() if k != "checksum"}
        text = json.dumps(body, sort_keys=True, separators=(",", ":") if self.compact else None).encode()
        return hashlib.sha256(text).hexdigest() if self.digest == "sha256" else xxhash.xxh3_64_hexdigest(text)

    def seal(self, content: dict) -> bytes:
        """The bytes of ``content`` (without ``checksum``) with its checksum added last."""
        body = {k: v for k, v in content.items() if k != "checksum"}
        text = json.dumps({**body, "checksum": self.checksum(body)}, indent=self.indent, sort_keys=self.sort_keys)
        return (text + "\n" if self.newline else text).encode()

    @staticmethod
    def parse(raw: bytes) -> dict:
        """The JSON object in ``raw``; BadSeal("json") if it is none."""
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise BadSeal("json", str(e)) from None
        if not isinstance(doc, dict):
            raise BadSeal("json", "not a JSON object")
        return doc

    def check(self, doc: dict, raw: bytes) -> dict:
        """``doc`` (parsed from ``raw``, checksum included) if its checksum matches and ``raw``
        is exactly what :meth:`seal` writes for it; else BadSeal("checksum") or BadSeal("form")."""
        if doc.get("checksum") != self.checksum(doc):
            raise BadSeal("checksum")
        if self.seal(doc) != raw:
            raise BadSeal("form")
        return doc

    def unseal(self, raw: bytes) -> dict:
        """:meth:`parse` then :meth:`check`: the verified document, ``checksum`` included."""
        return self.check(self.parse(raw), raw)


STATE = Seal("sha256", compact=True, indent=1)  # governance, compliance and the RADOS stub


def checksum(doc: dict) -> str:
    return STATE.checksum(doc)


def load(files: PoolFiles, name: str, empty: dict, version: int, consequence: str, private: bool = False) -> dict:
    """The verified document ``name`` of ``files`` (a copy of ``empty`` when there is none).
    ``private`` makes a local file owner-only again if something widened it."""
    raw = files.read(name, private=private)
    if raw is None:
        return dict(empty, version=version)
    try:
        doc = STATE.unseal(raw)
    except BadSeal:
        doc = None
    if doc is None or doc.get("version") != version:
        raise CorruptData(f"{files.where(name)} is damaged (checksum, version or form): {consequence}")
    return doc


def save(files: PoolFiles, name: str, doc: dict, version: int) -> None:
    files.write(name, STATE.seal(dict(doc, version=version)))
