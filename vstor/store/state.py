"""In-memory pool state: the volume table, the catalog of groups and snapshots, one chunk
map per volume and per snapshot member, the last sequence number of each consistency group
and the live bytes of each journal segment.

Pure: the same ``apply_*`` calls serve live writes, journal replay and ``pool check``,
which is what makes replay reproduce exactly the state the daemon had. A snapshot is a
``share()`` of its members' maps taken while one event is applied, so it is an exact cut of
the journal order: every record before the event, none after.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator

from vstor.errors import AlreadyExists, Busy
from vstor.store.catalog.groups import Catalog
from vstor.store.catalog.volumes import DEFAULT_GROUP, Volume, VolumeTable
from vstor.store.journal.format import LOC_SHIFT, REC_RELOCATE, REC_TRIM, REC_VOLUME, REC_WRITE, RecordHeader, loc_segno
from vstor.store.maps.chunkmap import VolumeMap
from vstor.store.maps.leaf import FRAGMENTED, LEAF_BITS, LEAF_SLOTS, Leaf, remap_versions
from vstor.store.maps.mapstore import dump_maps, load_maps

VOLUME_OPS = {"create", "delete", "resize", "set_group"}


class PoolState:
    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.table = VolumeTable()
        self.catalog = Catalog()
        self.maps: dict[int, VolumeMap] = {}
        self.snap_maps: dict[tuple[int, int], VolumeMap] = {}  # (snapshot id, volume id) -> frozen map
        self.group_seq: dict[int, int] = defaultdict(int)
        self.live: dict[int, int] = defaultdict(int)  # segno -> logical bytes referenced (see chunkmap)
        self.seg_logical: dict[int, int] = defaultdict(int)  # segno -> logical bytes of data written to it
        # vid -> bytes of write and trim records journaled for the volume, ever (from the
        # journal records alone, so replay reproduces it; snapshot policies' --after-written).
        self.written: dict[int, int] = defaultdict(int)
        # record volume -> the maps that may reference its records (see holders()). Maps are
        # added and dropped only by apply_event, which empties this.
        self._holders: dict[int, list[VolumeMap]] = {}

    def _on_ref(self, loc: int, delta: int) -> None:
        segno = loc >> LOC_SHIFT  # loc_segno, inline: twice per host write
        left = self.live[segno] + delta
        if left:
            self.live[segno] = left
        else:
            del self.live[segno]

    def new_map(self, lineage: tuple[int, ...] = ()) -> VolumeMap:
        return VolumeMap(self.chunk_size, self._on_ref, lineage)

    def all_maps(self) -> Iterator[VolumeMap]:
        yield from self.maps.values()
        yield from self.snap_maps.values()

    def owned_maps(self) -> list[tuple[int, VolumeMap]]:
        """Every map with the volume whose live map it is, or 0 for a snapshot's."""
        return [*self.maps.items()] + [(0, vm) for vm in self.snap_maps.values()]

    # -- validation that spans the volume table and the catalog ------------------------------
    def make_volume_create(self, name: str, size: int, now: float) -> dict:
        ev = self.table.make_create(name, size, now)
        if self.catalog.find_group(name):
            raise AlreadyExists(f"the name {name!r} is already used by a group")
        return ev

    def make_volume_delete(self, name: str) -> dict:
        vol = self.table.get(name)
        if vol.group != DEFAULT_GROUP:
            raise Busy(f"volume {name!r} is in group {self.catalog.groups[vol.group].name!r}; remove it first with "
                       f"'vstor group remove {self.catalog.groups[vol.group].name} {name}'")
        snaps = self.catalog.snapshots_of("volume", vol.id)
        if snaps:
            raise Busy(f"volume {name!r} has {len(snaps)} snapshot(s); delete them first "
                       f"('vstor snapshot list {name}')")
        return self.table.make_delete(name)

    # -- applying events -------------------------------------------------------------------
    def apply_event(self, ev: dict) -> None:
        self._holders.clear()
        op = ev["op"]
        if op == "batch":
            for sub in ev["events"]:
                self.apply_event(sub)
        elif op in VOLUME_OPS:
            self._apply_volume_event(ev)
        elif op == "snap_create":
            self.catalog.apply(ev)
            for m in ev["members"]:
                self.snap_maps[(ev["sid"], m["vid"])] = self.maps[m["vid"]].share(tuple(m["lineage"]))
        elif op == "snap_delete":
            self.catalog.apply(ev)
            for key in [k for k in self.snap_maps if k[0] == ev["sid"]]:
                self.snap_maps.pop(key).release()
        elif op == "seq_set":  # replication: the group now equals its peer's at this sequence number
            self.group_seq[ev["group"]] = ev["seq"]
        elif op == "rollback":
            snap = self.catalog.snaps[ev["sid"]]
            for m in snap.members:
                if m.vid in ev["volumes"] and m.vid in self.maps:
                    self.maps.pop(m.vid).release()
                    self.maps[m.vid] = self.snap_maps[(snap.id, m.vid)].share(tuple(self.table.lineage(m.vid)))
                    self.table.by_id[m.vid].size = m.size
        else:
            self.catalog.apply(ev)

    def _apply_volume_event(self, ev: dict) -> Volume | None:
        vol, old_size = self.table.apply(ev)
        if vol is None:
            return None
        if ev["op"] == "create":
            origin = ev.get("clone_of")
            if origin:
                self.maps[vol.id] = self.snap_maps[(origin[0], origin[1])].share(tuple(vol.lineage))
            else:
                self.maps[vol.id] = self.new_map(tuple(vol.lineage))
        elif ev["op"] == "delete":
            self.maps.pop(vol.id).release()
            self.written.pop(vol.id, None)
        elif ev["op"] == "resize" and old_size is not None and vol.size < old_size:
            self.maps[vol.id].unmap(vol.size, old_size)
        return vol

    def apply_record(self, loc: int, h: RecordHeader, payload: bytes | None = None) -> None:
        """Apply one journal record (replay). ``payload`` is needed only for REC_VOLUME."""
        if h.rtype == REC_VOLUME:
            assert payload is not None
            self.apply_event(json.loads(payload))
            return
        if h.rtype == REC_RELOCATE:
            self.seg_logical[loc_segno(loc)] += h.length
            if h.seq:  # GC move: h.seq is the old record's location
                self.relocate_all(h.volume, h.offset, h.offset + h.length, h.seq, loc)
            elif h.volume in self.maps:  # compaction of one volume's live map
                self.maps[h.volume].map(h.offset, h.offset + h.length, loc)
            return
        vol = self.table.by_id_or_none(h.volume)
        if vol is None:
            return  # the volume was deleted later in the journal
        if h.seq:
            self.group_seq[h.group] = max(self.group_seq[h.group], h.seq)
        if h.rtype in (REC_WRITE, REC_TRIM):  # as Store._append counts them
            self.written[vol.id] += h.length
        end = min(h.offset + h.length, vol.size)
        if end <= h.offset:
            return
        vm = self.maps[vol.id]
        if h.rtype == REC_WRITE:
            self.seg_logical[loc_segno(loc)] += h.length
            vm.map(h.offset, end, loc)
        elif h.rtype == REC_TRIM:
            vm.unmap(h.offset, end)

    def holders(self, record_volume: int) -> list[VolumeMap]:
        """The maps that may reference records of ``record_volume``: those whose lineage holds
        it (the volume, its snapshots, clones made from them). Kept until the next event, so
        that GC, which asks for every chunk it moves, does not test every map each time."""
        found = self._holders.get(record_volume)
        if found is None:
            found = self._holders[record_volume] = [vm for vm in self.all_maps() if record_volume in vm.lineage]
        return found

    def versions(self, record_volume: int, chunk: int) -> list[Leaf]:
        """The distinct leaf versions holding ``chunk`` in the maps that may reference records of
        ``record_volume``."""
        key = chunk >> LEAF_BITS
        found: dict[int, Leaf] = {}
        for vm in self.holders(record_volume):
            leaf = vm.leaves.get(key)
            if leaf is not None:
                found[id(leaf)] = leaf
        return list(found.values())

    def referenced(self, record_volume: int, start: int, end: int, old: int,
                   leaves: list[Leaf] | None = None) -> list[tuple[int, int]]:
        """The pieces of [start, end) (inside one chunk) that some map still maps to ``old``.
        ``leaves``: the chunk's :meth:`versions`, if the caller already has them."""
        chunk = start // self.chunk_size
        base = chunk * self.chunk_size
        i = chunk & (LEAF_SLOTS - 1)
        pieces, lists = [], set()
        for leaf in self.versions(record_volume, chunk) if leaves is None else leaves:
            slot = leaf.slots[i]
            if slot == old:
                pieces.append((max(start, base), min(end, base + self.chunk_size)))
            elif slot == FRAGMENTED and id(leaf.overlays[chunk]) not in lists:
                lists.add(id(leaf.overlays[chunk]))
                pieces += [(max(s, start), min(e, end)) for s, e, loc in leaf.overlays[chunk]
                           if loc == old and e > start and s < end]
        return pieces

    def relocate_all(self, record_volume: int, start: int, end: int, old: int, new: int,
                     leaves: list[Leaf] | None = None) -> int:
        """Point every map's references to ``old`` within [start, end) at ``new`` (a GC copy), in
        place in each distinct leaf version, so every holder sees it. ``leaves``: for a range
        inside one chunk, its :meth:`versions`, if the caller already has them (the move
        changes leaves in place, so they stay the chunk's versions)."""
        cs = self.chunk_size
        moved = 0
        for chunk in range(start // cs, (end - 1) // cs + 1):
            found = self.versions(record_volume, chunk) if leaves is None else leaves
            moved += remap_versions(found, chunk, start, end, old, new, cs, self._on_ref)
        return moved

    # -- checkpoint form -------------------------------------------------------------------
    def meta_json(self) -> dict:
        return {"table": self.table.to_json(), "catalog": self.catalog.to_json(),
                "group_seq": {str(g): s for g, s in self.group_seq.items()},
                "seg_logical": {str(g): n for g, n in self.seg_logical.items()},
                "written": {str(v): n for v, n in self.written.items()},
                "maps": [["v", vid] for vid in self.maps] + [["s", sid, vid] for sid, vid in self.snap_maps]}

    def maps_blob(self) -> bytes:
        return dump_maps(list(self.all_maps()))

    @classmethod
    def from_checkpoint(cls, chunk_size: int, meta: dict, blob: bytes, origins: bool = True) -> PoolState:
        st = cls(chunk_size)
        st.table = VolumeTable.from_json(meta["table"])
        st.catalog = Catalog.from_json(meta.get("catalog"))
        st.group_seq.update({int(g): s for g, s in meta["group_seq"].items()})
        st.seg_logical.update({int(g): n for g, n in meta.get("seg_logical", {}).items()})
        st.written.update({int(v): n for v, n in meta.get("written", {}).items()})  # absent before 2026-12
        for name, vm in zip(meta["maps"], load_maps(blob, chunk_size, st._on_ref, origins), strict=True):
            if name[0] == "v":
                vm.lineage = tuple(st.table.lineage(name[1]))
                st.maps[name[1]] = vm
            else:
                snap = st.catalog.snaps[name[1]]
                vm.lineage = tuple(next(m.lineage for m in snap.members if m.vid == name[2]))
                st.snap_maps[(name[1], name[2])] = vm
        st._holders.clear()
        return st

    def mapped_bytes(self) -> int:
        return sum(vm.mapped_bytes for vm in self.maps.values())
