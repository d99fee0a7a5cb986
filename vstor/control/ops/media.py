"""Control operations for media libraries (mixed into PoolService).

With a running daemon they act on its MediaManager (the one whose drives FUSE serves);
offline, on one opened for the command under the pool lock.
"""

from __future__ import annotations

from typing import Any

from vstor.media.manager import MediaManager, media_files, parse_range
from vstor.store.store import Store


class MediaOps:
    store: Store
    media: Any

    def _media(self) -> MediaManager:
        if self.media is None:
            self.media = MediaManager(self.store.pool, self.store.media_key,
                                      files=media_files(self.store.pool, self.store.backend), state=self.store.files)
        return self.media

    def op_library_create(self, name: str, type: str, slots: int, drives: int, mailslots: int,
                          drive_model: str = "LTO-9", timing: str = "off") -> dict:
        return self._media().create_library(name, type, slots, drives, mailslots, drive_model, timing)

    def op_library_list(self) -> list[dict]:
        m = self._media()
        return [m.describe(lib) for _, lib in sorted(m.libs.items())]

    def op_library_show(self, name: str) -> dict:
        m = self._media()
        return m.describe(m.lib(name)) | {"inventory": m.inventory(name)}

    def op_library_delete(self, name: str) -> dict:
        return self._media().delete_library(name)

    def op_media_create(self, library: str, barcodes: list[str], range: str | None = None,
                        type: str | None = None, capacity: int | None = None) -> list[dict]:
        codes = list(barcodes) + (parse_range(range) if range else [])
        return self._media().create_media(library, codes, type, capacity)

    def op_media_inventory(self, library: str) -> list[dict]:
        return self._media().inventory(library)

    def op_media_load(self, library: str, barcode: str, drive: int) -> dict:
        return self._media().load(library, barcode, drive)

    def op_media_unload(self, library: str, drive: int) -> dict:
        return self._media().unload(library, drive)

    def op_media_move(self, library: str, src: str, dst: str, flip: bool = False) -> dict:
        return self._media().move(library, src, dst, flip)

    def op_media_import(self, library: str, door: str = "cycle") -> dict:
        return self._media().import_(library, door)

    def op_media_export(self, library: str, barcode: str) -> dict:
        return self._media().export(library, barcode)

    def op_media_show(self, library: str, barcode: str, verify: bool = False) -> dict:
        return self._media().show(library, barcode, verify)

    def op_media_protect(self, library: str, barcode: str, on: bool) -> dict:
        return self._media().protect(library, barcode, on)

    def op_media_disc(self, library: str, drive: int, action: str) -> dict:
        return self._media().disc_op(library, drive, action)
