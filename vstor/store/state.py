"""In-memory pool state: the volume table, one chunk map per volume, the last sequence
number of each consistency group and the live bytes of each journal segment.

Pure: the same ``apply_*`` calls serve live writes, journal replay and ``pool check``,
which is what makes replay reproduce exactly the state the daemon had.
"""

from __future__ import annotations

import json
from collections import defaultdict

from vstor.store.chunkmap import VolumeMap
from vstor.store.format import REC_RELOCATE, REC_TRIM, REC_VOLUME, REC_WRITE, RecordHeader, loc_segno
from vstor.store.volumes import Volume, VolumeTable


class PoolState:
    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.table = VolumeTable()
        self.maps: dict[int, VolumeMap] = {}
        self.group_seq: dict[int, int] = defaultdict(int)
        self.live: dict[int, int] = defaultdict(int)  # segno -> logical bytes referenced
        self.seg_logical: dict[int, int] = defaultdict(int)  # segno -> logical bytes of data written to it

    def _on_ref(self, loc: int, delta: int) -> None:
        segno = loc_segno(loc)
        left = self.live[segno] + delta
        if left:
            self.live[segno] = left
        else:
            del self.live[segno]

    def new_map(self) -> VolumeMap:
        return VolumeMap(self.chunk_size, self._on_ref)

    # -- applying journal records -----------------------------------------------------------
    def apply_volume_event(self, ev: dict) -> Volume | None:
        vol, old_size = self.table.apply(ev)
        if vol is None:
            return None
        if ev["op"] == "create":
            self.maps[vol.id] = self.new_map()
        elif ev["op"] == "delete":
            vm = self.maps.pop(vol.id)
            for _chunk, extents in list(vm.iter_chunks()):
                for s, e, loc in extents:
                    self._on_ref(loc, -(e - s))
        elif ev["op"] == "resize" and old_size is not None and vol.size < old_size:
            self.maps[vol.id].unmap(vol.size, old_size)
        return vol

    def apply_record(self, loc: int, h: RecordHeader, payload: bytes | None = None) -> None:
        """Apply one journal record (replay). ``payload`` is needed only for REC_VOLUME."""
        if h.rtype == REC_VOLUME:
            assert payload is not None
            self.apply_volume_event(json.loads(payload))
            return
        vol = self.table.by_id_or_none(h.volume)
        if vol is None:
            return  # the volume was deleted later in the journal
        if h.seq:
            self.group_seq[h.group] = max(self.group_seq[h.group], h.seq)
        end = min(h.offset + h.length, vol.size)
        if end <= h.offset:
            return
        vm = self.maps[vol.id]
        if h.rtype in (REC_WRITE, REC_RELOCATE):
            self.seg_logical[loc_segno(loc)] += h.length
            vm.map(h.offset, end, loc)
        elif h.rtype == REC_TRIM:
            vm.unmap(h.offset, end)

    # -- checkpoint form -------------------------------------------------------------------
    def meta_json(self) -> dict:
        return {"table": self.table.to_json(), "group_seq": {str(g): s for g, s in self.group_seq.items()},
                "seg_logical": {str(g): n for g, n in self.seg_logical.items()}}

    @classmethod
    def from_checkpoint(cls, chunk_size: int, meta: dict, maps: dict[int, bytes]) -> PoolState:
        st = cls(chunk_size)
        st.table = VolumeTable.from_json(meta["table"])
        st.group_seq.update({int(g): s for g, s in meta["group_seq"].items()})
        st.seg_logical.update({int(g): n for g, n in meta.get("seg_logical", {}).items()})
        for vid in st.table.by_id:
            blob = maps.get(vid)
            if blob is None:
                st.maps[vid] = st.new_map()
            else:
                st.maps[vid], _ = VolumeMap.deserialize(memoryview(blob), chunk_size, st._on_ref)
        return st

    def mapped_bytes(self) -> int:
        return sum(vm.mapped_bytes for vm in self.maps.values())
