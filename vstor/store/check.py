"""``vstor pool check``: an offline, read-only verification of a pool.

Checks the superblock, both checkpoint copies, the journal consumer positions, that the journal holds every segment the
checkpoints need, every record of every segment (header and frame checksums), that replay
reproduces a consistent state, and that every mapped extent points at a valid record of the
right volume and range whose frames decode: with the key, AES-GCM authentication is
verified too.

A problem is damage to acknowledged data or metadata: the check then exits non-zero. A
torn tail in the newest segment past the last commit marker is normal after a crash and is
reported as a note (the next ``array start`` cuts it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vstor.errors import CorruptData, FormatError, VstorError
from vstor.store.journal.consumers import consumer_problems
from vstor.store.journal.format import SEGMENT_HEADER_SIZE, block_sums_match, loc_pos, loc_segno
from vstor.store.journal.segscan import ScanEnd
from vstor.store.maintenance.checkpoint import read_checkpoints
from vstor.store.recovery import load_state, replay
from vstor.store.superblock import superblock_problems

# Advice to run pool check, which error messages carry for other commands: cut in its output.
_HINTS = ("; run 'vstor pool check", ": the array will not start")


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

    def problem(self, text: str) -> None:
        for hint in _HINTS:
            text = text.split(hint)[0]
        self.problems.append(text)


def check_pool(store: object) -> CheckReport:
    """``store`` is a Store built without recovery (Store(...), not Store.open)."""
    from vstor.store.store import Store

    assert isinstance(store, Store)
    rep = CheckReport()
    store.codec.verify_only = not store.codec.encrypted
    for why in superblock_problems(store.backend):
        rep.problem(why)
    for why in read_checkpoints(store.backend, store.sb.uuid_bytes).problems():
        rep.problem(why)
    for why in consumer_problems(store.files.sub("meta")):
        rep.problem(why)
    torn = _check_segments(store, rep)
    try:
        loaded = load_state(store.journal, store.backend, store.sb)
        end = ScanEnd(*loaded.start)
        replay(loaded.state, store.journal, loaded.start, end)
    except (FormatError, CorruptData) as e:
        rep.problem(str(e))
        return rep
    if torn is not None and (torn.segno, torn.pos) < loaded.start:
        rep.problem(f"journal segment {torn.segno} is damaged at offset {torn.pos} ({torn.reason}), before "
                    f"the newest checkpoint's position (segment {loaded.start[0]} offset {loaded.start[1]}): "
                    "written and synced before that checkpoint, so not a torn tail; the records from there "
                    "to the segment's end are damaged")
    elif torn is not None:
        rep.notes.append(f"torn tail in the newest segment {torn.segno} at offset {torn.pos} ({torn.reason}): "
                         "normal after a crash; the next 'array start' cuts it")
    store.state = state = loaded.state
    _check_extents(store, rep, state, set(store.journal.segments()))
    if not store.codec.encrypted and store.sb.encrypt:
        rep.notes.append("no key given: checksums verified, AES-GCM authentication not checked")
    return rep


def _check_segments(store: object, rep: CheckReport) -> ScanEnd | None:
    """Every record of every segment; a damaged segment does not stop the others' check.
    Returns where the newest segment's records end early, if they do: a torn tail, unless the
    newest checkpoint was written after it (check_pool decides)."""
    journal = store.journal  # type: ignore[attr-defined]
    segs = journal.segments()
    torn = None
    for i, segno in enumerate(segs):
        end = ScanEnd(segno, SEGMENT_HEADER_SIZE)
        try:
            for rec in journal.scan_one(segno, end):
                rep.records += 1
                if rec.header.sums and not block_sums_match(rec.header, rec.sums, rec.frames, rec.payload):
                    rep.problem(f"journal segment {segno} record at offset {loc_pos(rec.loc)}: its block sums do "
                                "not match its frames (a writer's bug; the frames are intact, but reads of the "
                                "blocks concerned fail with EIO)")
        except CorruptData as e:
            rep.problem(str(e))
            continue
        if not end.reason:
            continue
        if i < len(segs) - 1:
            rep.problem(f"journal segment {segno} is damaged at offset {end.pos} ({end.reason}); newer "
                        "segments follow, so these are not a torn tail: the records from there to the "
                        "segment's end are lost")
        else:
            torn = end
    return torn


def _check_extents(store: object, rep: CheckReport, state: object, present: set[int]) -> None:
    """Every mapped extent of volumes and snapshots; a leaf shared by several maps once."""
    seen: set[int] = set()
    verified: set[tuple[int, int, int]] = set()  # leaf versions share most extents: verify each once
    names = [(f"volume {vid}", vm) for vid, vm in state.maps.items()]  # type: ignore[attr-defined]
    names += [(f"snapshot {sid} volume {vid}", vm)
              for (sid, vid), vm in state.snap_maps.items()]  # type: ignore[attr-defined]
    for what, vm in names:
        for key, leaf in sorted(vm.leaves.items()):
            if id(leaf) in seen:
                continue
            seen.add(id(leaf))
            for _chunk, extents in leaf.extents(key, state.chunk_size):  # type: ignore[attr-defined]
                for ext in extents:
                    if ext not in verified:
                        verified.add(ext)
                        _verify_extent(store, rep, present, what, vm.lineage, *ext)


def _verify_extent(store: object, rep: CheckReport, present: set[int], what: str, lineage: tuple[int, ...],
                   s: int, e: int, loc: int) -> None:
    rep.extents += 1
    if loc_segno(loc) not in present:
        rep.problem(f"{what} range {s}-{e} points at missing segment {loc_segno(loc)}")
        return
    try:
        store.assemble(lineage, s, e - s, [(s, e, loc)])  # type: ignore[attr-defined]
        rep.bytes_verified += e - s
    except VstorError as err:
        rep.problem(f"{what} range {s}-{e} (segment {loc_segno(loc)} record {loc_pos(loc)}): {err}")
