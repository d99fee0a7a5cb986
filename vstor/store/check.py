"""``vstor pool check``: an offline, read-only verification of a pool.

Checks the superblock, the checkpoint, every record of every segment (header and frame
checksums), that replay reproduces a consistent state, and that every mapped extent points
at a valid record of the right volume and range whose frames decode: with the key, AES-GCM
authentication is verified too. A torn tail in the newest segment is normal after a crash
and is reported as a note, not a problem (the next ``array start`` cuts it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vstor.errors import CorruptData, FormatError, VstorError
from vstor.store.format import SEGMENT_HEADER_SIZE, loc_pos, loc_segno
from vstor.store.recovery import load_state, replay
from vstor.store.segread import ScanEnd


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    records: int = 0
    extents: int = 0
    bytes_verified: int = 0

    @property
    def clean(self) -> bool:
        return not self.problems


def check_pool(store: object) -> CheckReport:
    """``store`` is a Store built without recovery (Store(...), not Store.open)."""
    from vstor.store.store import Store

    assert isinstance(store, Store)
    rep = CheckReport()
    store.codec.verify_only = not store.codec.encrypted
    segs = store.journal.segments()
    # 1. every record in every segment
    if segs:
        end = ScanEnd(segs[0], SEGMENT_HEADER_SIZE)
        try:
            for _rec in store.journal.scan(segs[0], SEGMENT_HEADER_SIZE, end):
                rep.records += 1
        except CorruptData as e:
            rep.problems.append(str(e))
        if end.reason and not rep.problems:
            rep.notes.append(f"torn tail in segment {end.segno} at offset {end.pos} ({end.reason}): "
                             "normal after a crash; the next 'array start' cuts it")
    # 2. checkpoint + replay
    try:
        state, start, _gen = load_state(store)
        end = ScanEnd(*start)
        replay(state, store.journal, start, end)
    except (FormatError, CorruptData) as e:
        rep.problems.append(str(e))
        return rep
    store.state = state
    # 3. every mapped extent, of volumes and snapshots; a leaf shared by several maps once
    present = set(segs)
    seen: set[int] = set()
    verified: set[tuple[int, int, int]] = set()  # leaf versions share most extents: verify each once
    names = [(f"volume {vid}", vm) for vid, vm in state.maps.items()]
    names += [(f"snapshot {sid} volume {vid}", vm) for (sid, vid), vm in state.snap_maps.items()]
    for what, vm in names:
        for key, leaf in sorted(vm.leaves.items()):
            if id(leaf) in seen:
                continue
            seen.add(id(leaf))
            for _chunk, extents in leaf.extents(key, state.chunk_size):
                for ext in extents:
                    if ext not in verified:
                        verified.add(ext)
                        _verify_extent(store, rep, present, what, vm.lineage, *ext)
    if not store.codec.encrypted and store.sb.encrypt:
        rep.notes.append("no key given: checksums verified, AES-GCM authentication not checked")
    return rep


def _verify_extent(store: object, rep: CheckReport, present: set[int], what: str, lineage: tuple[int, ...],
                   s: int, e: int, loc: int) -> None:
    rep.extents += 1
    if loc_segno(loc) not in present:
        rep.problems.append(f"{what} range {s}-{e} points at missing segment {loc_segno(loc)}")
        return
    try:
        store.assemble(lineage, s, e - s, [(s, e, loc)])  # type: ignore[attr-defined]
        rep.bytes_verified += e - s
    except VstorError as err:
        rep.problems.append(f"{what} range {s}-{e} (segment {loc_segno(loc)} record {loc_pos(loc)}): {err}")
