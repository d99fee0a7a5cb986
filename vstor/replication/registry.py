"""Where an array keeps its pairs: ``meta/pairs/GROUP.json`` and ``GROUP.bitmap``.

Each pair file is replaced atomically and durably (``atomic_write``) on every state change,
so after a crash an array comes back in the last state it reported. The file carries a
format version and an xxh3-64 of its canonical JSON, like the superblock.
"""

from __future__ import annotations

import json
import os

import xxhash

from vstor.durable import atomic_write, remove_durably
from vstor.errors import FormatError
from vstor.replication import bitmap
from vstor.replication.pairstate import Pair

FORMAT = "vstor-pair"
VERSION = 1


class Registry:
    def __init__(self, meta_dir: str) -> None:
        self.dir = os.path.join(meta_dir, "pairs")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)

    def _path(self, group: str, ext: str) -> str:
        return os.path.join(self.dir, f"{group}.{ext}")

    def load_all(self) -> dict[str, Pair]:
        out = {}
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".json"):
                pair = self._load(os.path.join(self.dir, name))
                out[pair.group] = pair
        return out

    def _load(self, path: str) -> Pair:
        with open(path, "rb") as f:
            raw = f.read()
        doc = json.loads(raw)
        csum = doc.pop("checksum", "")
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise FormatError(f"{path} is not a version {VERSION} pair file")
        if xxhash.xxh3_64_hexdigest(json.dumps(doc, sort_keys=True).encode()) != csum or _encode(doc) != raw:
            raise FormatError(f"{path} fails its checksum or is not in the form vstor writes; the pair's state "
                              "is unknown: delete the pair on both arrays and create it again")
        return Pair.from_dict(doc["pair"])

    def save(self, pair: Pair) -> None:
        atomic_write(self._path(pair.group, "json"),
                     _encode({"format": FORMAT, "version": VERSION, "pair": pair.as_dict()}))

    def remove(self, group: str) -> None:
        remove_durably(self._path(group, "bitmap"))
        remove_durably(self._path(group, "json"))

    def load_bitmap(self, group: str) -> dict[int, bitmap.DirtyBitmap]:
        return bitmap.load(self._path(group, "bitmap"))

    def save_bitmap(self, group: str, maps: dict[int, bitmap.DirtyBitmap]) -> None:
        bitmap.save(self._path(group, "bitmap"), maps)


def _encode(doc: dict) -> bytes:
    """A pair file's bytes: ``doc`` with its checksum, in the one form the loader accepts."""
    csum = xxhash.xxh3_64_hexdigest(json.dumps(doc, sort_keys=True).encode())
    return (json.dumps({**doc, "checksum": csum}, indent=2, sort_keys=True) + "\n").encode()
