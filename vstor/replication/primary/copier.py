"""The primary's copy phase (COPY, RESYNC), mixed into the Shipper.

First the journal is folded into the dirty bitmap (and, for a victim, the peer's bitmap is
merged in), then the current data of every dirty range is sent, zero ranges as trims; then
SYNC_END tells the secondary where the records that follow start. The bitmap is cleared only
once the secondary has acknowledged SYNC_END, so an interrupted copy starts again whole.
"""

from __future__ import annotations

import base64
import logging

from vstor.replication import bitmap as bitmaps
from vstor.replication import transport, wire
from vstor.replication.bitmap import DirtyBitmap
from vstor.replication.folding import consumer_name
from vstor.replication.pairstate import Pair
from vstor.replication.primary.parts import ShipperParts
from vstor.store.journal.consumers import read_group

log = logging.getLogger("vstor.replication")

COPY_PIECE = 1 << 20


class CopyMixin(ShipperParts):

    def _sync(self, conn: transport.Conn, pair: Pair, answer: dict) -> None:
        self.fold()
        maps = self.mgr.bitmaps.setdefault(self.group, {})
        if answer.get("bitmap"):  # the victim's own changes since the divergence: copy over them too
            theirs = bitmaps.decode(base64.b64decode(answer["bitmap"]), "from the peer")
            by_name = {v["name"]: v for v in self.mgr.members(pair)}
            for name, bm in ((answer["names"][str(k)], b) for k, b in theirs.items()):
                if name in by_name:
                    mine = maps.setdefault(by_name[name]["id"], DirtyBitmap(by_name[name]["size"]))
                    mine.merge(bm)
        self.copy_total = sum(bm.dirty_bytes() for bm in maps.values())
        self.copy_done = 0
        conn.send_json(wire.SYNC_BEGIN, {"kind": pair.state, "bytes": self.copy_total})
        sizes = {m["id"]: m["size"] for m in self.mgr.members(pair)}
        for vid, bm in sorted(maps.items()):
            for s, e in bm.runs():
                for off in range(s, min(e, sizes.get(vid, 0)), COPY_PIECE):
                    n = min(COPY_PIECE, e - off)
                    data = self.store.read(vid, off, n)
                    if data.count(0) == len(data):
                        self._send(conn, wire.COPY, wire.pack_copy_zero(vid, off, len(data)))
                    else:
                        self._send(conn, wire.COPY, wire.pack_copy(vid, off, data))
                    self.copy_done += n
                    self._poll(conn, 0)
                    self._serve_requests(conn)
        base, now_seq = self._base_seq(pair)
        self.sync_acked.clear()
        conn.send_json(wire.SYNC_END, {"base_seq": base, "consistent_at": now_seq})
        while not self.sync_acked.is_set():
            self._poll(conn, 0.1)
            self._check_alive(conn)
        for bm in maps.values():
            bm.clear()
        self.mgr.registry.save_bitmap(self.group, maps)
        self.consistent_at = now_seq
        log.info("pair %s: copied %d bytes; records from seq %d follow", self.group, self.copy_done, base + 1)

    def _base_seq(self, pair: Pair) -> tuple[int, int]:
        """(the sequence number before the first record after the consumer, the group's seq now)."""
        gid = self.mgr.gid(pair)
        with self.store.locked():
            now_seq = self.store.state.group_seq.get(gid, 0)
        self.store.sync()
        start = self.store.consumers.position(consumer_name(self.group))
        entries, _ = read_group(self.store, start, gid, max_bytes=1, want_data=False)
        return (entries[0].seq - 1 if entries else now_seq), now_seq
