"""Cartridges for one backup job: choose, load, span, unload.

The policy names its media; a job writes to the first of them that can take data, in this
order: an appendable one (already labelled, not full), then a blank or scratch one, then one
that retention marked for recycling (rewritten from BOT with a new label; never WORM, which
retention refuses to recycle). A cartridge the early warning filled is marked full, unloaded
to its home slot, and the next one is loaded into the same drive. Reads load the cartridge a
part lies on, asking for it by barcode when it is offsite.

Every load and unload goes through the MediaManager, so the library's inventory stays true
(and ``media inventory`` shows the job's cartridge in the drive while it runs).
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from vstor.backup.catalog import BackupCatalog
from vstor.backup.media.tapefile import TapeLabel
from vstor.errors import Busy, MediaError, NotFound
from vstor.media.manager import MediaManager
from vstor.media.tapedrive import MTREW, MTWEOF, TapeDrive

WRITE_ORDER = ("append", "scratch", None, "recycle")  # catalog state; None: never used by a backup


class Cartridges:
    def __init__(self, media: MediaManager, catalog: BackupCatalog, library: str, pool_uuid: str,
                 now: Callable[[], float]) -> None:
        self.media, self.catalog, self.library = media, catalog, library
        self.pool_uuid, self.now = pool_uuid, now
        self.loaded: dict[int, str] = {}  # drive -> barcode this job loaded
        self.writing: str | None = None  # the cartridge being written

    # -- drives ----------------------------------------------------------------------------
    def free_drive(self) -> int:
        """An empty drive of the library; Busy (with the reason a waiting job shows) if none."""
        lib = self.media.lib(self.library)
        for i, code in enumerate(lib.drives):
            if code is None:
                return i
        raise Busy(f"waiting for a drive: all {len(lib.drives)} drive(s) of {self.library} hold a cartridge "
                   f"({', '.join(c or '-' for c in lib.drives)}); unload one with 'vstor media unload'")

    def _load(self, barcode: str, drive: int | None = None) -> tuple[int, TapeDrive]:
        lib = self.media.lib(self.library)
        try:
            kind, idx = lib.where(barcode)
        except NotFound:
            raise MediaError(f"cartridge {barcode} is not in library {self.library} (offsite?): put it in the "
                             f"mail slot and run 'vstor media import {self.library}', then try again",
                             errno.ENOMEDIUM) from None
        if kind == "drive":
            if idx not in self.loaded:
                raise Busy(f"cartridge {barcode} is loaded in drive{idx} by someone else; unload it first")
            drive = idx
        else:
            drive = self.free_drive() if drive is None else drive
            self.media.load(self.library, barcode, drive)
            self.loaded[drive] = barcode
        drv = self.media.drive(self.library, drive)
        if not isinstance(drv, TapeDrive):
            raise MediaError(f"library {self.library} is not a tape library; backups go to tape", errno.EINVAL)
        return drive, drv

    def unload(self, drive: int) -> None:
        if self.loaded.pop(drive, None) is not None:
            self.media.unload(self.library, drive)

    def release(self) -> None:
        """Unload every cartridge this job loaded (best effort: at the end of a job, failed or not)."""
        for drive in list(self.loaded):
            try:
                self.unload(drive)
            except Exception:  # noqa: BLE001 - the job's outcome is already decided; the inventory says where it is
                self.loaded.pop(drive, None)

    # -- writing ---------------------------------------------------------------------------
    def pick(self, barcodes: list[str], skip: set[str]) -> str:
        """The policy's next cartridge to write to (MediaError if none can take data)."""
        lib = self.media.lib(self.library)
        rows = {b: self.catalog.media(b) for b in barcodes if b in lib.media and b not in skip}
        for state in WRITE_ORDER:
            for b, row in rows.items():
                if (row["state"] if row else None) == state and not lib.media[b].protect:
                    if state == "recycle" and lib.media[b].worm:
                        continue
                    return b
        raise MediaError(f"no cartridge of this policy can take data ({', '.join(barcodes)} are full, in use, "
                         "protected or missing): add media with 'vstor media create' and to the policy, or free "
                         "some with 'vstor backup expire'", errno.ENOSPC)

    def load_for_write(self, barcodes: list[str], drive: int | None = None, skip: set[str] | None = None) -> TapeDrive:
        barcode = self.pick(barcodes, skip or set())
        drive, drv = self._load(barcode, drive)
        self.writing = barcode
        row = self.catalog.media(barcode)
        if row is None:
            row = self.catalog.add_media(barcode, self.library, self.media.lib(self.library).media[barcode].worm)
        if row["state"] == "recycle":  # rewrite from BOT: a new label truncates what was there
            drv.op(MTREW, 1)
            drv.write(TapeLabel(barcode, self.pool_uuid, self.now()).encode())
            drv.op(MTWEOF, 1)
            self.catalog.set_media(barcode, state="append", bytes=0, files=1,
                                   recycle_count=(row.get("recycle_count") or 0) + 1)
        elif row["state"] != "append":
            self.catalog.set_media(barcode, state="append")
        return drv

    def next_for_write(self, barcodes: list[str]) -> TapeDrive:
        """The cartridge being written reached its early warning: mark it full, put it away,
        load the next one into the same drive."""
        full = self.writing
        assert full is not None
        self.catalog.set_media(full, state="full")
        drive = next(d for d, b in self.loaded.items() if b == full)
        self.unload(drive)
        return self.load_for_write(barcodes, drive, skip={full})

    # -- reading ---------------------------------------------------------------------------
    def load_for_read(self, barcode: str) -> TapeDrive:
        return self._load(barcode)[1]

