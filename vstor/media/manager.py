"""The pool's media libraries: persistence, cartridges, and the admin commands.

Libraries live in the pool state files ``media/LIB.json`` (PoolFiles: ``POOL/media/LIB.json``
or a RADOS object; format ``vstor-library`` v1, sealed with an xxh3-64 checksum,
replaced atomically on every change, so the inventory always survives a restart or crash)
and their cartridges in ``POOL/media/LIB/BARCODE.tape`` (the name ``LIB/BARCODE.tape`` in the
pool's media file area, given to the constructor: those very files on a local pool, striped
objects on a RADOS pool). Disc sides are ``POOL/media/LIB/BARCODE.sideN.img`` in the pool's
sparse area ``optical`` (the same files on a local pool, written stripes on RADOS) and
``media/LIB/BARCODE.sideN.json`` among the state files (optical.py). A loaded drive keeps its cartridge
open; after a restart the cartridge is still in the drive, positioned at BOT (like a drive
power-cycled with a tape inside). Drives open through FUSE are busy: they cannot be unloaded
or moved from.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable

from vstor.checkedjson import BadSeal, Seal
from vstor.errors import AlreadyExists, Busy, FormatError, NotFound, UsageError
from vstor.media import mediatypes as mt
from vstor.media.drives import DrivesMixin
from vstor.media.library import CLEANING_USES, Library, Medium, parse_timing
from vstor.media.mailslots import MailSlotsMixin
from vstor.media.optical import DiscSide, side_names
from vstor.media.tapedrive import TapeDrive
from vstor.store.backend.base import PoolBackend
from vstor.store.backend.files import DISC_AREA, MEDIA_AREA, FileArea, LocalFiles
from vstor.store.backend.statefiles import PoolFiles, local_files
from vstor.store.catalog.volumes import NAME_RE

FORMAT, VERSION = "vstor-library", 1
SEAL = Seal("xxh3", indent=1, sort_keys=False, newline=True)  # keys as written; the checksum sorts them


class MediaManager(MailSlotsMixin, DrivesMixin):
    def __init__(self, pool: str, key: bytes | None = None, sleep: Callable[[float], None] = time.sleep,
                 files: FileArea | None = None, state: PoolFiles | None = None, discs: FileArea | None = None) -> None:
        """``files``: where the cartridges are (default: the files under ``POOL/media``; a pool's
        ``backend.file_area("media", POOL/media)`` for its own kind, see :func:`media_files`).
        ``state``: the pool's state files (the store's ``files``), where the library files and
        shelf records live; default: the files of the directory ``pool``. ``discs``: where the
        disc images are (default: the sparse area ``optical`` of ``state``'s backend, see
        :func:`disc_files`: the files under ``POOL/media`` on a local pool)."""
        self.sleep = sleep  # the timing model waits with this (tests inject a recorder)
        self.dir = os.path.join(pool, "media")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.files = files or LocalFiles(self.dir)
        pool_files = state or local_files(pool)
        self.state = pool_files.sub("media")  # LIB.json, LIB/shelf/BARCODE.json, LIB/BARCODE.sideN.json
        self.discs = discs or disc_files(pool, pool_files.backend)
        self.key = key
        self.lock = threading.RLock()
        self.libs: dict[str, Library] = {}
        for f in self.state.names(".json"):
            lib = self._load(f)
            self.libs[lib.name] = lib
        self.drives: dict[tuple[str, int], TapeDrive | DiscSide] = {}
        self.open_drives: set[tuple[str, int]] = set()

    # -- persistence -------------------------------------------------------------------------
    def _load(self, name: str) -> Library:
        raw = self.state.read(name)
        try:
            doc = SEAL.unseal(raw if raw is not None else b"")
        except BadSeal:
            doc = {}
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise FormatError(f"{self.state.where(name)} is not a valid version {VERSION} library file (bad checksum "
                              "or format, or not in the form vstor writes)")
        return Library.from_dict(doc["library"])

    def save(self, lib: Library) -> None:
        doc = {"format": FORMAT, "version": VERSION, "library": lib.as_dict()}
        self.state.write(f"{lib.name}.json", SEAL.seal(doc))

    def lib(self, name: str) -> Library:
        try:
            return self.libs[name]
        except KeyError:
            raise NotFound(f"no library named {name!r} (see 'vstor library list')") from None

    def cart_path(self, lib: str, barcode: str) -> str:
        """Where a cartridge is, for messages (and the file itself on a local pool)."""
        return self.files.describe(self.cart_name(lib, barcode))

    @staticmethod
    def cart_name(lib: str, barcode: str) -> str:
        """A cartridge's name in the media file area."""
        return f"{lib}/{barcode}.tape"

    # -- libraries ---------------------------------------------------------------------------
    def create_library(self, name: str, type_: str, slots: int, drives: int, mailslots: int,
                       drive_model: str = "LTO-9", timing: str = "off") -> dict:
        if not NAME_RE.match(name or ""):
            raise UsageError(f"invalid library name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        if type_ == "tape":
            mt.drive_gen(drive_model)
        with self.lock:
            if name in self.libs:
                raise AlreadyExists(f"library {name} already exists")
            lib = Library.create(name, type_, slots, drives, mailslots, drive_model if type_ == "tape" else "")
            lib.timing = parse_timing(timing)
            os.makedirs(os.path.join(self.dir, name), mode=0o700, exist_ok=True)
            self.files.makedirs(name)
            self.discs.makedirs(name)
            self.save(lib)
            self.libs[name] = lib
            return self.describe(lib)

    def describe(self, lib: Library) -> dict:
        return {"name": lib.name, "type": lib.type, "slots": len(lib.slots), "drives": len(lib.drives),
                "mailslots": len(lib.mailslots), "drive_model": lib.drive_model, "media": len(lib.media),
                "loaded": [c for c in lib.drives if c], "mail_open": lib.mail_open, "timing": lib.timing}

    def delete_library(self, name: str) -> dict:
        with self.lock:
            lib = self.lib(name)
            if any(lib.drives):
                raise Busy(f"library {name} has loaded drives; unload them first ('vstor media unload')")
            desc = self.describe(lib)
            shelf = self.state.sub(f"{name}/shelf")
            sides = self.state.sub(name)  # the disc sides' states (state files)
            for f in shelf.names(".json"):  # the shelf's records (state files), then the library's own files
                shelf.remove(f)
            for f in sides.names(".json"):
                sides.remove(f)
            self.files.remove_tree(name)
            self.discs.remove_tree(name)
            shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)
            self.state.remove(f"{name}.json")
            del self.libs[name]
            return desc | {"deleted": True}

    # -- media -----------------------------------------------------------------------------------
    def create_media(self, name: str, barcodes: list[str], type_: str | None = None,
                     capacity: int | None = None) -> list[dict]:
        with self.lock:
            lib = self.lib(name)
            dup = sorted({c for c in barcodes if barcodes.count(c) > 1})
            if dup:
                raise AlreadyExists(f"barcode {dup[0]} is given twice")
            new = []
            for code in barcodes:
                if code in lib.media:
                    raise AlreadyExists(f"barcode {code} already exists in library {name}")
                if lib.type == "tape":
                    kind = mt.tape_kind(code)
                    cap = capacity or mt.LTO[kind.gen].capacity
                    new.append(Medium(code, kind.name, 0, cap, worm=kind.worm, cleaning=kind.cleaning))
                else:
                    if not type_:
                        raise UsageError("optical media need --type (BD-R, BD-RE, BDXL, DVD+R, DVD-RW, CD-R, MO)")
                    d = mt.disc_type(type_)
                    new.append(Medium(code, d.name, 0, capacity or d.capacity))
            free = len(lib.free_slots())  # the home slots of loaded media stay theirs
            if len(new) > free:
                raise Busy(f"library {name} has {free} empty slots (not counting the home slots of loaded media), "
                           f"not {len(new)}")
            for m in new:
                lib.add(m)
            self.save(lib)
            return [m.__dict__ for m in new]

    def inventory(self, name: str) -> list[dict]:
        with self.lock:
            lib = self.lib(name)
            rows = lib.inventory()
            for r in rows:
                if r["barcode"]:
                    m = lib.media[r["barcode"]]
                    r["capacity"], r["used"] = m.capacity, self._used(lib, m.barcode)
            return rows

    def _used(self, lib: Library, barcode: str) -> int:
        """Bytes on the medium: a cartridge's objects, or the allocated bytes of a disc's images."""
        name = self.cart_name(lib.name, barcode)
        if lib.type == "tape":
            return max(0, self.files.size(name) - 64) if self.files.exists(name) else 0
        images = (side_names(lib.name, barcode, side)[0] for side in range(mt.disc_type(lib.media[barcode].kind).sides))
        return sum(self.discs.allocated(name) for name in images if self.discs.exists(name))

    def load(self, name: str, barcode: str, drive: int) -> dict:
        with self.lock:
            lib = self.lib(name)
            kind, idx = lib.where(barcode)
            if kind == "drive":
                raise Busy(f"{barcode} is already loaded in drive{idx}")
            m = lib.medium(barcode)
            if m.cleaning and m.loads >= CLEANING_USES:
                raise Busy(f"cleaning cartridge {barcode} is used up ({m.loads} cleanings); export it")
            if lib.type == "tape" and not m.cleaning:
                readable, _ = mt.can_use(mt.drive_gen(lib.drive_model), mt.tape_kind(barcode).gen)
                if not readable:
                    raise UsageError(f"{barcode} ({m.kind}) is not compatible with the {lib.drive_model} drives")
            lib.move(str(lib.address(kind, idx)), f"drive{drive}")
            self.save(lib)
            self._wait(lib, "move", 1.0)
            self._wait(lib, "load", 1.0)
            return {"barcode": barcode, "drive": drive, "kind": m.kind}

    def _wait(self, lib: Library, what: str, fraction: float) -> None:
        """The optional timing model: a real library takes this long (off: no wait)."""
        seconds = lib.timing.get(what, 0.0) * fraction
        if seconds > 0:
            self.sleep(seconds)

    def unload(self, name: str, drive: int) -> dict:
        with self.lock:
            lib = self.lib(name)
            lib.element(f"drive{drive}")
            code = lib.drives[drive]
            if code is None:
                raise Busy(f"drive{drive} of {name} is empty")
            if (name, drive) in self.open_drives:
                raise Busy(f"drive{drive} of {name} is in use (open); close it before unloading")
            self._release(name, drive)
            home = lib.home_of(code)
            lib.move(f"drive{drive}", home)
            self.save(lib)
            self._wait(lib, "unload", 1.0)
            self._wait(lib, "move", 1.0)
            return {"barcode": code, "drive": drive, "to": int(home)}

    def move(self, name: str, src: str, dst: str, flip: bool = False) -> dict:
        with self.lock:
            lib = self.lib(name)
            busy = {d for (n, d) in self.open_drives if n == name}
            sk, si = lib.element(src)
            if sk == "drive":
                if si in busy:
                    raise Busy(f"drive{si} of {name} is in use (open); close it first")
                self._release(name, si)
            code = lib.move(src, dst, busy)
            m = lib.media[code]
            if flip:
                if lib.type != "optical" or mt.disc_type(m.kind).sides != 2:
                    raise UsageError(f"{code} ({m.kind}) has one side; --flip is for two-sided MO discs")
                m.side ^= 1
            self.save(lib)
            return {"barcode": code, "from": src, "to": dst, "side": m.side}

    def protect(self, name: str, barcode: str, on: bool) -> dict:
        with self.lock:
            lib = self.lib(name)
            lib.medium(barcode).protect = on
            self.save(lib)
            for (n, d), drv in self.drives.items():
                if n == name and lib.drives[d] == barcode:
                    if isinstance(drv, TapeDrive):
                        drv.read_only = on or not drv.writable
                    else:
                        drv.protect = on
            return {"barcode": barcode, "protect": on}

    def show(self, name: str, barcode: str, verify: bool = False) -> dict:
        with self.lock:
            lib = self.lib(name)
            m = lib.medium(barcode)
            kind, idx = lib.where(barcode)
            d = m.__dict__ | {"element": f"{kind}{idx + (kind != 'drive')}", "used": self._used(lib, barcode)}
            if lib.type == "optical":
                sides = mt.disc_type(m.kind).sides
                loaded = self.drives.get((name, idx)) if kind == "drive" else None
                d["sides"] = []
                for side in range(sides):
                    if isinstance(loaded, DiscSide) and loaded.side == side:
                        d["sides"].append(loaded.describe())
                        continue
                    ds = DiscSide(self.discs, self.state, lib.name, m.barcode, mt.disc_type(m.kind), side)
                    d["sides"].append(ds.describe())
                    ds.close()
            elif lib.type == "tape" and not m.cleaning:
                drv = self.drives.get((name, idx)) if kind == "drive" else None
                cart = drv.parts[0] if isinstance(drv, TapeDrive) else self._open_cart(lib, m)
                try:  # partition 0; "partitions" counts them all
                    d |= {"files": cart.files(), "blocks": cart.eod - cart.files(), "eod": cart.eod,
                          "partitions": len(m.partitions) + 1, "encrypted": self.key is not None,
                          "cut_at_load": cart.cut}
                    if verify:
                        d["verify"] = cart.verify()
                finally:
                    if not isinstance(drv, TapeDrive):
                        cart.close()
            return d

    # -- drives (used by the FUSE adapter) ---------------------------------------------------------
    def close(self) -> None:
        with self.lock:
            for key in list(self.drives):
                self._release(*key)


def media_files(pool: str, backend: PoolBackend) -> FileArea:
    """The cartridge area of a pool: files under ``POOL/media`` (local), objects in ``PREFIX/media`` (RADOS)."""
    return backend.file_area(MEDIA_AREA, os.path.join(pool, "media"))


def disc_files(pool: str, backend: PoolBackend) -> FileArea:
    """The disc image area of a pool: sparse files under ``POOL/media`` (local), the written
    stripes in ``PREFIX/optical`` (RADOS)."""
    return backend.sparse_file_area(DISC_AREA, os.path.join(pool, "media"))


def parse_range(text: str) -> list[str]:
    """``VT0001L9-VT0020L9`` -> the 20 barcodes (same prefix and suffix, numbered part counts)."""
    m = re.fullmatch(r"([A-Z]*)(\d+)([A-Z0-9]*)-([A-Z]*)(\d+)([A-Z0-9]*)", text)
    if not m or m.group(1) != m.group(4) or m.group(3) != m.group(6) or len(m.group(2)) != len(m.group(5)):
        raise UsageError(f"invalid range {text!r}: use FIRST-LAST with the same prefix and suffix, like "
                         "VT0001L9-VT0020L9")
    a, b = int(m.group(2)), int(m.group(5))
    if b < a or b - a >= 10000:
        raise UsageError(f"invalid range {text!r}: at most 10000 barcodes, first <= last")
    return [f"{m.group(1)}{i:0{len(m.group(2))}d}{m.group(3)}" for i in range(a, b + 1)]
