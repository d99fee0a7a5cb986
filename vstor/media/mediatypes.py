"""Media types: tape generations and optical discs, their capacities and compatibility. Pure.

Figures from ../shared/reference/tape-and-optical.md §4.1, §4.3 and §8. Barcodes carry the
tape type in their suffix (LTO convention): ``VT0001L9`` is an LTO-9 data cartridge,
``...LW`` an LTO-9 WORM one, and a ``CLN`` prefix a cleaning cartridge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vstor.errors import UsageError

TB, GB = 10**12, 10**9


@dataclass(frozen=True)
class TapeGen:
    gen: int
    capacity: int  # native bytes
    density: int  # SCSI density code, reported in MTIOCGET's mt_dsreg


LTO = {
    5: TapeGen(5, int(1.5 * TB), 0x58), 6: TapeGen(6, int(2.5 * TB), 0x5A), 7: TapeGen(7, 6 * TB, 0x5C),
    8: TapeGen(8, 12 * TB, 0x5E), 9: TapeGen(9, 18 * TB, 0x60),
}
WORM_SUFFIX = {"LT": 5, "LU": 6, "LV": 7, "LX": 8, "LW": 9}  # LTO WORM cartridge suffixes
BARCODE_RE = re.compile(r"^[A-Z0-9]{1,16}$")


@dataclass(frozen=True)
class TapeKind:
    gen: int
    worm: bool
    cleaning: bool

    @property
    def name(self) -> str:
        return "CLN" if self.cleaning else f"LTO{self.gen}{' WORM' if self.worm else ''}"


def tape_kind(barcode: str) -> TapeKind:
    """The cartridge type from its barcode: L5..L9 data, LT/LU/LV/LX/LW WORM, CLN... cleaning."""
    if not BARCODE_RE.match(barcode):
        raise UsageError(f"invalid barcode {barcode!r}: use 1-16 capital letters and digits, like VT0001L9")
    if barcode.startswith("CLN"):
        return TapeKind(9, False, True)
    suffix = barcode[-2:]
    if len(suffix) < 2:
        suffix = "??"
    if suffix in WORM_SUFFIX:
        return TapeKind(WORM_SUFFIX[suffix], True, False)
    if suffix[0] == "L" and suffix[1].isdigit() and int(suffix[1]) in LTO:
        return TapeKind(int(suffix[1]), False, False)
    raise UsageError(f"barcode {barcode!r} does not name a tape type: end it with L5..L9 (data), "
                     "LT/LU/LV/LX/LW (WORM), or start it with CLN (cleaning)")


def drive_gen(model: str) -> int:
    m = re.fullmatch(r"LTO-?(\d+)", model.upper())
    if not m or int(m.group(1)) not in LTO:
        raise UsageError(f"unknown drive model {model!r}: use LTO-5 .. LTO-9")
    return int(m.group(1))


def can_use(drive: int, media: int) -> tuple[bool, bool]:
    """(readable, writable) of generation ``media`` in a generation ``drive`` drive. LTO rule:
    write N and N-1, read N-2 as well; LTO-8 and LTO-9 read and write only N and N-1."""
    if drive >= 8:
        ok = media in (drive, drive - 1)
        return ok, ok
    return media in (drive, drive - 1, drive - 2), media in (drive, drive - 1)


@dataclass(frozen=True)
class DiscType:
    name: str
    capacity: int  # bytes per side
    rewritable: bool
    sides: int = 1


DISCS = {d.name: d for d in (
    DiscType("CD-R", 700 * 10**6, False), DiscType("DVD+R", int(4.7 * GB), False),
    DiscType("DVD-RW", int(4.7 * GB), True), DiscType("BD-R", 25 * GB, False), DiscType("BD-RE", 25 * GB, True),
    DiscType("BDXL", 100 * GB, False), DiscType("MO", int(4.6 * GB), True, sides=2),
)}


def disc_type(name: str) -> DiscType:
    try:
        return DISCS[name.upper()]
    except KeyError:
        raise UsageError(f"unknown optical type {name!r}: use one of {', '.join(DISCS)}") from None
