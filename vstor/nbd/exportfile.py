"""The pool's NBD exports, persisted in the pool state file ``meta/nbd_exports.json`` (PoolFiles:
a file of the pool directory or an object of a RADOS pool).

One JSON object ``{"version": 1, "exports": [...], "checksum": ...}``: each export is
``name``, ``volume``, ``snapshot`` ("GROUP-OR-VOLUME/SNAPSHOT/VOLUME" or null),
``read_only``, ``allow`` (client certificate common names; empty: any) and ``shared``.
The checksum is xxh3-64 (hex) of ``json.dumps`` of the other fields with sorted keys (the
seal, vstor/checkedjson.py); the file is replaced atomically, mode 0600 on a local pool.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from vstor.checkedjson import BadSeal, Seal
from vstor.errors import FormatError, UsageError
from vstor.store.catalog.volumes import NAME_RE

if TYPE_CHECKING:
    from vstor.store.backend.statefiles import PoolFiles

FILE = "nbd_exports.json"
VERSION = 1


@dataclass(frozen=True)
class ExportSpec:
    name: str
    volume: str  # the volume's name ("" for a snapshot export: the image is ``snapshot``)
    snapshot: str | None = None
    read_only: bool = False
    allow: tuple[str, ...] = field(default_factory=tuple)
    shared: bool = False

    def as_dict(self) -> dict:
        return asdict(self) | {"allow": list(self.allow)}


def check_name(name: str) -> None:
    if not NAME_RE.match(name or ""):
        raise UsageError(f"invalid export name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")


SEAL = Seal("xxh3", indent=2, newline=True)  # xxh3-64 of the sorted JSON (vstor/checkedjson.py)


def encode(specs: list[ExportSpec]) -> bytes:
    return SEAL.seal({"exports": [s.as_dict() for s in sorted(specs, key=lambda s: s.name)], "version": VERSION})


def decode(raw: bytes, path: str) -> list[ExportSpec]:
    try:
        data = SEAL.parse(raw)
        SEAL.check(data, raw)
        if data.get("version") != VERSION:
            raise FormatError(f"{path} has version {data.get('version')}; this vstor reads {VERSION}")
        return [ExportSpec(e["name"], e["volume"], e.get("snapshot"), bool(e["read_only"]),
                           tuple(e.get("allow") or ()), bool(e.get("shared"))) for e in data["exports"]]
    except BadSeal as e:
        raise FormatError(f"{e.describe(path)}; remove it and export the volumes again") from None
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise FormatError(f"{path} is unreadable: {e}; remove it and export the volumes again") from None


def load(meta: PoolFiles) -> list[ExportSpec]:
    """The exports of the pool whose ``meta`` state files are ``meta``; none if the file is absent."""
    raw = meta.read(FILE)
    return [] if raw is None else decode(raw, meta.where(FILE))


def save(meta: PoolFiles, specs: list[ExportSpec]) -> None:
    meta.write(FILE, encode(specs))
