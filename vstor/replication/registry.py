"""Where an array keeps its pairs: ``meta/pairs/GROUP.json`` and ``GROUP.bitmap``.

They are pool state files (vstor/store/backend/statefiles.py: files of the pool directory, or
objects of a RADOS pool). Each pair file is replaced atomically and durably on every state
change, so after a crash an array comes back in the last state it reported. The file carries
a format version and an xxh3-64 of its canonical JSON (a Seal, vstor/checkedjson.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vstor.checkedjson import BadSeal, Seal
from vstor.errors import FormatError
from vstor.replication import bitmap
from vstor.replication.pairstate import Pair

if TYPE_CHECKING:
    from vstor.store.backend.statefiles import PoolFiles

FORMAT = "vstor-pair"
VERSION = 1
SEAL = Seal("xxh3", indent=2, newline=True)  # xxh3-64 of the sorted JSON (vstor/checkedjson.py)


class Registry:
    def __init__(self, meta: PoolFiles) -> None:
        """``meta``: the pool's ``meta`` state files (``store.files.sub("meta")``)."""
        self.files = meta.sub("pairs")

    def load_all(self) -> dict[str, Pair]:
        out = {}
        for name in self.files.names(".json"):
            pair = self._load(name)
            out[pair.group] = pair
        return out

    def _load(self, name: str) -> Pair:
        path = self.files.where(name)
        raw = self.files.read(name)
        if raw is None:
            raise FormatError(f"{path} vanished while the pairs were read")
        try:
            doc = SEAL.parse(raw)
        except BadSeal as e:
            raise FormatError(f"{path} is not a pair file ({e}); the pair's state is unknown: delete the pair on "
                              "both arrays and create it again") from None
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise FormatError(f"{path} is not a version {VERSION} pair file")
        try:
            SEAL.check(doc, raw)
        except BadSeal:
            raise FormatError(f"{path} fails its checksum or is not in the form vstor writes; the pair's state "
                              "is unknown: delete the pair on both arrays and create it again") from None
        return Pair.from_dict(doc["pair"])

    def save(self, pair: Pair) -> None:
        doc = {"format": FORMAT, "version": VERSION, "pair": pair.as_dict()}
        self.files.write(f"{pair.group}.json", SEAL.seal(doc))

    def remove(self, group: str) -> None:
        self.files.remove(f"{group}.bitmap")
        self.files.remove(f"{group}.json")

    def load_bitmap(self, group: str) -> dict[int, bitmap.DirtyBitmap]:
        return bitmap.load(self.files, f"{group}.bitmap")

    def save_bitmap(self, group: str, maps: dict[int, bitmap.DirtyBitmap]) -> None:
        bitmap.save(self.files, f"{group}.bitmap", maps)
