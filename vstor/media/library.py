"""A media library: slots, drives, mail slots, a picker, and the media in them. Pure state.

Element addresses are stable and mirror SMC conventions: the picker is 1, mail slots start
at 16, drives at 256 and storage slots at 1024 (``ADDR``). Users may also name elements
``slotN``, ``driveN`` and ``mailN`` (numbered from 0 for drives, 1 for slots and mail slots).
Every failed move says why: the source is empty, the destination is full, the drive is
in use, or the mail slots are open.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from vstor.errors import AlreadyExists, Busy, NotFound, UsageError

ADDR = {"mail": 16, "drive": 256, "slot": 1024}
PICKER = 1
CLEANING_USES = 50  # a cleaning cartridge cleans this many times, then is used up
# The optional timing model (reference §8, LTO-9): load to ready, unload, a full rewind, and a
# locate across the whole tape; rewind and locate scale with the distance moved.
LTO9_TIMING = {"load": 16.0, "unload": 56.0, "rewind": 62.0, "locate": 65.0, "move": 5.0}
TIMING_KEYS = tuple(LTO9_TIMING)


def parse_timing(text: str) -> dict[str, float]:
    """``lto9`` (the LTO-9 figures), ``off``, or ``load=16,unload=56,rewind=62,locate=65,move=5``."""
    if text in ("", "off"):
        return {}
    if text.lower() == "lto9":
        return dict(LTO9_TIMING)
    out = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            key = ""
        if key.strip() not in TIMING_KEYS or out.get(key.strip(), -1) < 0:
            raise UsageError(f"invalid timing {item!r}: use lto9, off, or KEY=SECONDS with KEY in "
                             f"{', '.join(TIMING_KEYS)}")
    return out


@dataclass
class Medium:
    barcode: str
    kind: str  # "LTO9", "LTO9 WORM", "CLN", "BD-R", "MO", ...
    home: int  # the slot address it returns to
    capacity: int
    worm: bool = False
    cleaning: bool = False
    protect: bool = False
    side: int = 0  # optical two-sided media: the side facing the drive
    loads: int = 0
    partitions: list[int] = field(default_factory=list)  # tape: capacities of partitions 1.. (none: one)


@dataclass
class Library:
    name: str
    type: str  # "tape" or "optical"
    slots: list[str | None]
    drives: list[str | None]
    mailslots: list[str | None]
    drive_model: str = "LTO-9"
    media: dict[str, Medium] = field(default_factory=dict)
    mail_open: bool = False
    timing: dict[str, float] = field(default_factory=dict)  # seconds per operation; empty: no delays

    @classmethod
    def create(cls, name: str, type_: str, slots: int, drives: int, mailslots: int, drive_model: str) -> Library:
        if type_ not in ("tape", "optical"):
            raise UsageError(f"invalid library type {type_!r}: use tape or optical")
        if not (1 <= slots <= 10000 and 1 <= drives <= 64 and 0 <= mailslots <= 64):
            raise UsageError("a library has 1-10000 slots, 1-64 drives and 0-64 mail slots")
        return cls(name, type_, [None] * slots, [None] * drives, [None] * mailslots, drive_model)

    # -- addresses -------------------------------------------------------------------------------
    def element(self, spec: str | int) -> tuple[str, int]:
        """("slot"|"drive"|"mail", index) for an address (1024) or a name (slot1, drive0, mail1)."""
        text = str(spec).strip().lower()
        m = re.fullmatch(r"(slot|drive|mail)(\d+)", text)
        if m:
            kind, n = m.group(1), int(m.group(2))
            idx = n if kind == "drive" else n - 1
        elif text.isdigit():
            addr = int(text)
            kind = next((k for k in ("slot", "drive", "mail") if ADDR[k] <= addr < ADDR[k] + len(self._list(k))),
                        "")
            if not kind:
                raise NotFound(f"library {self.name} has no element at address {addr}")
            idx = addr - ADDR[kind]
        else:
            raise UsageError(f"invalid element {spec!r}: use an address like 1024 or a name like slot1, drive0, mail1")
        if not 0 <= idx < len(self._list(kind)):
            raise NotFound(f"library {self.name} has no {kind} {text[len(kind):]} (see 'vstor media inventory')")
        return kind, idx

    def _list(self, kind: str) -> list[str | None]:
        return {"slot": self.slots, "drive": self.drives, "mail": self.mailslots}[kind]

    def address(self, kind: str, idx: int) -> int:
        return ADDR[kind] + idx

    def where(self, barcode: str) -> tuple[str, int]:
        self.medium(barcode)
        for kind in ("drive", "slot", "mail"):
            lst = self._list(kind)
            if barcode in lst:
                return kind, lst.index(barcode)
        raise NotFound(f"{barcode} is not in library {self.name}")

    def medium(self, barcode: str) -> Medium:
        try:
            return self.media[barcode]
        except KeyError:
            raise NotFound(f"no medium {barcode!r} in library {self.name} (see 'vstor media inventory "
                           f"{self.name}')") from None

    def free_slots(self, keep: str | None = None) -> list[int]:
        """Indexes of the empty slots a medium may take: not the home slot of a medium loaded in a
        drive (it goes back there at unload), except ``keep``'s own."""
        owned = {self.media[c].home for c in self.drives if c and c != keep and c in self.media}
        return [i for i, c in enumerate(self.slots) if c is None and self.address("slot", i) not in owned]

    # -- changes ---------------------------------------------------------------------------------
    def add(self, m: Medium) -> None:
        if m.barcode in self.media:
            raise AlreadyExists(f"barcode {m.barcode} already exists in library {self.name}")
        free = self.free_slots()
        if not free:
            raise Busy(f"library {self.name} has no empty slot for {m.barcode} (the home slots of loaded media "
                       "are kept for them)")
        idx = free[0]
        m.home = self.address("slot", idx)
        self.slots[idx] = m.barcode
        self.media[m.barcode] = m

    def move(self, src: str | int, dst: str | int, busy_drives: set[int] = frozenset()) -> str:  # type: ignore[assignment]
        """Move the medium at ``src`` to ``dst``; returns its barcode."""
        (sk, si), (dk, di) = self.element(src), self.element(dst)
        if self.mail_open and "mail" in (sk, dk):
            raise Busy(f"the mail slots of {self.name} are open: close them ('vstor media import') first")
        barcode = self._list(sk)[si]
        if barcode is None:
            raise Busy(f"source {sk}{si + (sk != 'drive')} (address {self.address(sk, si)}) is empty")
        if self._list(dk)[di] is not None:
            what = "drive is loaded" if dk == "drive" else "destination is full"
            raise Busy(f"{dk}{di + (dk != 'drive')} (address {self.address(dk, di)}): the {what} "
                       f"({self._list(dk)[di]})")
        if sk == "drive" and si in busy_drives:
            raise Busy(f"drive{si} is in use (open); close it before moving {barcode}")
        self._list(sk)[si] = None
        self._list(dk)[di] = barcode
        if dk == "drive":
            self.media[barcode].loads += 1
        return barcode

    def home_of(self, barcode: str) -> str:
        home = self.media[barcode].home
        kind, idx = self.element(home)
        if self._list(kind)[idx] is None:
            return str(home)
        free = self.free_slots(keep=barcode)
        if not free:
            raise Busy(f"no empty slot to put {barcode} back")
        return str(self.address("slot", free[0]))

    def remove(self, barcode: str) -> None:
        kind, idx = self.where(barcode)
        self._list(kind)[idx] = None
        del self.media[barcode]

    def inventory(self) -> list[dict]:
        rows = []
        for kind in ("drive", "slot", "mail"):
            for i, code in enumerate(self._list(kind)):
                m = self.media.get(code) if code else None
                rows.append({"element": f"{kind}{i + (kind != 'drive')}", "address": self.address(kind, i),
                             "barcode": code, "kind": m.kind if m else None,
                             "protect": m.protect if m else None})
        return rows

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Library:
        media = {k: Medium(**v) for k, v in d.get("media", {}).items()}
        return cls(**{**{k: v for k, v in d.items() if k != "media"}, "media": media})
