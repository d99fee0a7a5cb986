"""Drives of a library, mixed into MediaManager: opening a loaded medium for I/O, tape
partitions (one cartridge file each), disc sides, and letting go of a drive at unload.

A drive's state (TapeDrive or DiscSide) is made on first use after a load or a restart, at
BOT, from the medium in the drive; a different medium in the drive gives a new state, so
MTIOCGET is right after every load, unload and move.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

from vstor.errors import Busy, NotFound, UsageError
from vstor.media import mediatypes as mt
from vstor.media.cartridge import Cartridge
from vstor.media.library import Library, Medium
from vstor.media.optical import DiscSide
from vstor.media.tapedrive import TapeDrive
from vstor.store.backend.files import FileArea
from vstor.store.backend.statefiles import PoolFiles

MAX_BLOCK = 1 << 20  # the FUSE request size (max_write): larger tape blocks cannot pass 1:1


class DrivesMixin:
    dir: str
    key: bytes | None
    lock: threading.RLock
    drives: dict[tuple[str, int], TapeDrive | DiscSide]
    open_drives: set[tuple[str, int]]
    lib: Callable[[str], Library]  # provided by MediaManager
    save: Callable[[Library], None]
    cart_path: Callable[[str, str], str]
    cart_name: Callable[[str, str], str]
    files: FileArea
    discs: FileArea  # the disc images (MediaManager)
    state: PoolFiles  # the media state files, where the sides' states are
    _wait: Callable[[Library, str, float], None]

    libs: dict[str, Library]

    def drive_rows(self) -> list[dict]:
        """One dict per drive of every library (for status and metrics): library, drive, type,
        barcode, open, and the bytes read and written since the medium was loaded."""
        rows = []
        with self.lock:
            for lib in self.libs.values():
                for idx, code in enumerate(lib.drives):
                    state = self.drives.get((lib.name, idx)) if code else None
                    rows.append({"library": lib.name, "drive": idx, "type": lib.type, "barcode": code or "",
                                 "open": (lib.name, idx) in self.open_drives,
                                 "read_bytes": getattr(state, "read_bytes", 0),
                                 "write_bytes": getattr(state, "write_bytes", 0)})
        return rows

    def _open_cart(self, lib: Library, m: Medium, part: int = 0) -> Cartridge:
        name = self.cart_name(lib.name, m.barcode)
        if part:
            name = name[: -len(".tape")] + f".p{part}.tape"
        cap = m.partitions[part - 1] if part else m.capacity - sum(m.partitions)
        return Cartridge(name, m.barcode, cap, m.worm, self.key, partition=part, files=self.files)

    def _open_parts(self, lib: Library, m: Medium) -> list[Cartridge]:
        return [self._open_cart(lib, m, p) for p in range(len(m.partitions) + 1)]

    def _repartition_drive(self, lib: Library, m: Medium, drv: TapeDrive, size_mib: int) -> list[Cartridge]:
        return self._repartition(lib, m, drv.parts, size_mib)  # the drive's partitions at the time of MTMKPART

    def _repartition(self, lib: Library, m: Medium, old: list[Cartridge], size_mib: int) -> list[Cartridge]:
        """MTMKPART: erase the tape and make one partition (0) or two (partition 1 of SIZE MiB)."""
        p1 = size_mib << 20
        if p1 < 0 or p1 >= m.capacity:
            raise UsageError(f"partition 1 of {size_mib} MiB does not fit on {m.barcode}")
        for c in old:
            c.close()
            self.files.delete(c.path)
        m.partitions = [p1] if p1 else []
        self.save(lib)
        return self._open_parts(lib, m)

    def _disc(self, lib: Library, m: Medium) -> DiscSide:
        return DiscSide(self.discs, self.state, lib.name, m.barcode, mt.disc_type(m.kind), m.side, m.protect)

    def disc_op(self, name: str, drive: int, op: str) -> dict:
        """finalize or erase the disc side in ``drive``."""
        with self.lock:
            if (name, drive) in self.open_drives:
                raise Busy(f"drive{drive} of {name} is in use (open); close it first")
            disc = self.drive(name, drive)
            if not isinstance(disc, DiscSide):
                raise UsageError(f"library {name} is a tape library: finalize and erase are for discs")
            if op == "finalize":
                disc.finalize()
            else:
                disc.erase()
            return {"barcode": disc.barcode} | disc.describe()

    def drive(self, name: str, idx: int) -> TapeDrive | DiscSide:
        """The drive's state, opening its cartridge on first use (after a load or a restart)."""
        with self.lock:
            lib = self.lib(name)
            code = lib.drives[idx] if 0 <= idx < len(lib.drives) else None
            if code is None:
                raise NotFound(f"drive{idx} of {name} holds no medium (load one with 'vstor media load')")
            m = lib.media[code]
            if m.cleaning:
                raise Busy(f"drive{idx} of {name} holds cleaning cartridge {code}; unload it")
            if lib.type == "optical":
                disc = self.drives.get((name, idx))
                if not isinstance(disc, DiscSide) or disc.barcode != code or disc.side != m.side:
                    disc = self._disc(lib, m)
                    self.drives[(name, idx)] = disc
                disc.protect = m.protect
                return disc
            drv = self.drives.get((name, idx))
            if not isinstance(drv, TapeDrive) or drv.cart.barcode != code:
                gen = mt.drive_gen(lib.drive_model)
                _, writable = mt.can_use(gen, mt.tape_kind(code).gen)
                drv = TapeDrive(self._open_parts(lib, m), mt.LTO[gen].density, writable, m.protect, MAX_BLOCK,
                                delay=functools.partial(self._wait, lib))
                drv.repartition = functools.partial(self._repartition_drive, lib, m, drv)
                self.drives[(name, idx)] = drv
            return drv

    def _release(self, name: str, idx: int) -> None:
        drv = self.drives.pop((name, idx), None)
        if isinstance(drv, DiscSide):
            drv.close_session()
            drv.close()
        elif drv is not None:
            drv.close(rewind=True)
            for c in drv.parts:
                c.close()
