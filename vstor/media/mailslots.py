"""Mail slots (import/export elements) of a library, mixed into MediaManager.

``export`` moves a medium into a free mail slot. ``import`` opens the mail door: media in the
mail slots leave the library for its shelf (``LIB/shelf/``: their files and a Medium record),
the shelf's media come in through the slots, the door closes, and they move to empty slots.
The shelf's Medium records are pool state files (``media/LIB/shelf/BARCODE.json``, PoolFiles).
A cartridge moves to and from the shelf as ``LIB/shelf/BARCODE.tape`` in the media file area,
a disc side's image as ``LIB/shelf/BARCODE.sideN.img`` in the disc area (a rename on a local
pool, a copy then delete on RADOS), and its state as ``media/LIB/shelf/BARCODE.sideN.json`` (a
state file: written at the destination, then removed at the source).
While the door is open, moves to or from mail slots are refused (Library.move).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from vstor.errors import AlreadyExists, Busy
from vstor.media.library import Library, Medium
from vstor.media.mediatypes import DISCS
from vstor.media.optical import side_names
from vstor.store.backend.files import FileArea

MAX_SIDES = max(d.sides for d in DISCS.values())

if TYPE_CHECKING:
    from vstor.store.backend.statefiles import PoolFiles


class MailSlotsMixin:
    dir: str
    state: PoolFiles  # the pool's media state files (MediaManager)
    lock: threading.RLock
    files: FileArea
    discs: FileArea  # the disc images (MediaManager)

    lib: Callable[[str], Library]  # provided by MediaManager
    save: Callable[[Library], None]

    def export(self, name: str, barcode: str) -> dict:
        with self.lock:
            lib = self.lib(name)
            if None not in lib.mailslots:
                raise Busy(f"the mail slots of {name} are full; open them with 'vstor media import {name} --open'")
            kind, idx = lib.where(barcode)
            if kind == "drive":
                raise Busy(f"{barcode} is loaded in drive{idx}; unload it first")
            lib.move(str(lib.address(kind, idx)), f"mail{lib.mailslots.index(None) + 1}")
            self.save(lib)
            return {"barcode": barcode, "mailslot": lib.mailslots.index(barcode) + 1}

    def import_(self, name: str, door: str = "cycle") -> dict:
        """Open the mail door (media in the mail slots go to the shelf outside), put the shelf's
        media in, close it, and move them to empty slots. ``door``: cycle, open or close."""
        with self.lock:
            lib = self.lib(name)
            out: dict = {"removed": [], "imported": []}
            if door in ("cycle", "open"):
                lib.mail_open = True
                for i, code in enumerate(lib.mailslots):
                    if code:
                        self._to_shelf(lib, code)
                        lib.mailslots[i] = None
                        out["removed"].append(code)
            if door in ("cycle", "close"):
                shelf = self._shelf(name)
                clash = sorted(c for c in shelf if c in lib.media)
                if clash:  # refuse before anything moves: the shelf keeps its media
                    raise AlreadyExists(f"medium {clash[0]} on the shelf has the barcode of a medium in {name}; "
                                        "delete one of them first")
                for code in sorted(shelf)[: len(lib.mailslots)]:
                    if not lib.free_slots():
                        break
                    m = Medium(**shelf[code])
                    self._move_files(f"{name}/shelf", name, code, lib.type == "optical")
                    self.state.remove(self._shelf_record(name, code))
                    lib.add(m)
                    out["imported"].append(code)
                lib.mail_open = False
            self.save(lib)
            return out | {"mail_open": lib.mail_open}

    @staticmethod
    def _shelf_record(lib: str, code: str) -> str:
        """The state file of a medium on the shelf (its Medium record), among the media files."""
        return f"{lib}/shelf/{code}.json"

    def _to_shelf(self, lib: Library, code: str) -> None:
        os.makedirs(os.path.join(self.dir, lib.name, "shelf"), exist_ok=True)
        self.files.makedirs(f"{lib.name}/shelf")
        self.discs.makedirs(f"{lib.name}/shelf")
        self._move_files(lib.name, f"{lib.name}/shelf", code, lib.type == "optical")
        self.state.write(self._shelf_record(lib.name, code), json.dumps(lib.media.pop(code).__dict__).encode())

    def _move_files(self, src: str, dst: str, code: str, optical: bool) -> None:
        """Move a medium's files (cartridge and its partitions, or disc images and states) between
        directories of the library (``LIB`` and ``LIB/shelf``)."""
        if not optical:
            for f in self.files.listdir(src):
                if f == f"{code}.tape" or (f.startswith(f"{code}.p") and f.endswith(".tape")):
                    self.files.rename(f"{src}/{f}", f"{dst}/{f}")
            return
        for side in range(MAX_SIDES):  # each side's image, then its state (no listing of the area)
            (image, state), (to_image, to_state) = side_names(src, code, side), side_names(dst, code, side)
            if self.discs.exists(image):
                self.discs.rename(image, to_image)
            raw = self.state.read(state)
            if raw is not None:
                self.state.write(to_state, raw)
                self.state.remove(state)

    def _shelf(self, name: str) -> dict[str, dict]:
        shelf = self.state.sub(f"{name}/shelf")
        out = {}
        for f in shelf.names(".json"):
            if "." in f[:-5]:  # BARCODE.sideN.json: a disc side's state, moved with its image
                continue
            raw = shelf.read(f)
            if raw is not None:
                out[f[:-5]] = json.loads(raw)
        return out
