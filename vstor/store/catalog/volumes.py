"""The volume table: names, ids, sizes and consistency groups. Pure state, no I/O.

Every change is an *event* (a small dict). The store writes the event to the journal as a
REC_VOLUME record and then applies it here; recovery applies the same events in journal
order, so the table is journaled exactly like data. Volume ids are never reused.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from vstor.errors import AlreadyExists, NotFound, UsageError
from vstor.units import format_size

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SIZE_ALIGN = 4096
MAX_VOLUME_SIZE = 1 << 50  # 1 PiB
DEFAULT_GROUP = 0


@dataclass
class Volume:
    id: int
    name: str
    size: int
    group: int = DEFAULT_GROUP
    created: float = 0.0
    # Volume ids whose journal records this volume's map may reference: itself, and for a
    # clone the ancestors whose snapshot it was cloned from.
    lineage: list[int] = field(default_factory=list)
    clone_of: list[int] | None = None  # [snapshot id, volume id] of a clone's origin


def check_name(name: str, what: str = "volume") -> None:
    if not NAME_RE.match(name or ""):
        raise UsageError(f"invalid {what} name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")


def check_size(size: int) -> None:
    if size <= 0 or size % SIZE_ALIGN:
        raise UsageError(f"invalid volume size {format_size(size)}: it must be a positive multiple of 4K")
    if size > MAX_VOLUME_SIZE:
        raise UsageError(f"invalid volume size {format_size(size)}: the limit is {format_size(MAX_VOLUME_SIZE)}")


class VolumeTable:
    def __init__(self) -> None:
        self.by_id: dict[int, Volume] = {}
        self.next_id = 1

    def get(self, name: str) -> Volume:
        for v in self.by_id.values():
            if v.name == name:
                return v
        raise NotFound(f"no volume named {name!r} (see 'vstor volume list')")

    def find(self, name: str) -> Volume | None:
        return next((v for v in self.by_id.values() if v.name == name), None)

    def by_id_or_none(self, vid: int) -> Volume | None:
        return self.by_id.get(vid)

    def lineage(self, vid: int) -> list[int]:
        return list(self.by_id[vid].lineage)

    def list(self) -> list[Volume]:
        return sorted(self.by_id.values(), key=lambda v: v.name)

    # -- events: validated by make_*, applied by apply ------------------------------------
    def make_create(self, name: str, size: int, now: float) -> dict:
        check_name(name)
        check_size(size)
        if self.find(name):
            raise AlreadyExists(f"volume {name!r} already exists")
        return {"op": "create", "id": self.next_id, "name": name, "size": size, "group": DEFAULT_GROUP,
                "created": now}

    def make_delete(self, name: str) -> dict:
        return {"op": "delete", "id": self.get(name).id}

    def make_resize(self, name: str, size: int, allow_shrink: bool) -> dict:
        vol = self.get(name)
        check_size(size)
        if size < vol.size and not allow_shrink:
            raise UsageError(f"shrinking {name!r} from {format_size(vol.size)} to {format_size(size)} discards data "
                             "past the new end; repeat with --allow-shrink if that is intended")
        return {"op": "resize", "id": vol.id, "size": size}

    def apply(self, ev: dict) -> tuple[Volume | None, int | None]:
        """Apply an event. Returns (volume, old_size) so the caller can trim a shrunk tail."""
        op = ev["op"]
        if op == "create":
            vol = Volume(ev["id"], ev["name"], ev["size"], ev.get("group", DEFAULT_GROUP), ev.get("created", 0.0),
                         ev.get("lineage") or [ev["id"]], ev.get("clone_of"))
            self.by_id[vol.id] = vol
            self.next_id = max(self.next_id, vol.id + 1)
            return vol, None
        found = self.by_id.get(ev["id"])
        if found is None:
            return None, None
        vol = found
        if op == "delete":
            del self.by_id[vol.id]
            return vol, None
        if op == "resize":
            old = vol.size
            vol.size = ev["size"]
            return vol, old
        if op == "set_group":
            vol.group = ev["group"]
            return vol, None
        raise ValueError(f"unknown volume event {op!r}")

    # -- checkpoint form -----------------------------------------------------------------
    def to_json(self) -> dict:
        return {"next_id": self.next_id, "volumes": [asdict(v) for v in self.by_id.values()]}

    @classmethod
    def from_json(cls, data: dict) -> VolumeTable:
        t = cls()
        t.next_id = data["next_id"]
        for v in data["volumes"]:
            vol = t.by_id[v["id"]] = Volume(**v)
            vol.lineage = vol.lineage or [vol.id]
        return t
