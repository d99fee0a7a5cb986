"""The pool's NBD exports, persisted in ``POOL/meta/nbd_exports.json``.

One JSON object ``{"version": 1, "exports": [...], "checksum": ...}``: each export is
``name``, ``volume``, ``snapshot`` ("GROUP-OR-VOLUME/SNAPSHOT/VOLUME" or null),
``read_only``, ``allow`` (client certificate common names; empty: any) and ``shared``.
The checksum is xxh3-64 (hex) of ``json.dumps`` of the other fields with sorted keys; the
file is replaced atomically (vstor.durable.atomic_write), mode 0600.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import xxhash

from vstor.durable import atomic_write
from vstor.errors import FormatError, UsageError
from vstor.store.catalog.volumes import NAME_RE

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


def encode(specs: list[ExportSpec]) -> bytes:
    body = {"exports": [s.as_dict() for s in sorted(specs, key=lambda s: s.name)], "version": VERSION}
    csum = xxhash.xxh3_64_hexdigest(json.dumps(body, sort_keys=True).encode())
    return (json.dumps({**body, "checksum": csum}, indent=2, sort_keys=True) + "\n").encode()


def decode(raw: bytes, path: str) -> list[ExportSpec]:
    try:
        data = json.loads(raw)
        csum = data.pop("checksum", None)
        if csum != xxhash.xxh3_64_hexdigest(json.dumps(data, sort_keys=True).encode()):
            raise FormatError(f"{path} fails its checksum; remove it and export the volumes again")
        if data.get("version") != VERSION:
            raise FormatError(f"{path} has version {data.get('version')}; this vstor reads {VERSION}")
        specs = [ExportSpec(e["name"], e["volume"], e.get("snapshot"), bool(e["read_only"]),
                            tuple(e.get("allow") or ()), bool(e.get("shared"))) for e in data["exports"]]
        if encode(specs) != raw:  # written only by encode: any other byte is damage
            raise FormatError(f"{path} is not in the form vstor writes (a damaged byte its checksum cannot see, "
                              "like changed spacing); remove it and export the volumes again")
        return specs
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise FormatError(f"{path} is unreadable: {e}; remove it and export the volumes again") from None


def path_in(meta_dir: str) -> str:
    return os.path.join(meta_dir, FILE)


def load(meta_dir: str) -> list[ExportSpec]:
    """The exports of the pool whose meta directory is ``meta_dir``; none if the file is absent."""
    path = path_in(meta_dir)
    try:
        with open(path, "rb") as f:
            return decode(f.read(), path)
    except FileNotFoundError:
        return []


def save(meta_dir: str, specs: list[ExportSpec]) -> None:
    atomic_write(path_in(meta_dir), encode(specs), mode=0o600)
