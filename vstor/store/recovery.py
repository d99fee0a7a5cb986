"""Recovery at open: load the checkpoint, check the journal it needs, replay the journal
after it, cut a torn tail.

After a crash the newest segment may end in a partly written record; its checksums fail
and everything from it on is cut (such a record was never acknowledged by a completed
fsync, because fsync returns only after fdatasync). Appending always resumes in a new
segment whose number was never used before, so a location is never written twice.

Guarantees (docs/formats.md, "Integrity and repair"):

* The newest valid checkpoint copy is used; if it is damaged, the older copy and the
  journal after it give the same state (the journal is kept from the older copy on).
* Every segment from the checkpoint's to the newest must be present, and the checkpoint's
  own segment must hold at least the checkpoint's position: otherwise the pool is damaged
  and opening it fails with CorruptData, which names what is missing.
* With no valid checkpoint copy the pool does not open, unless ``salvage`` (``pool check
  --repair``) is set and the journal still holds every segment from 1 on: then the state
  is rebuilt from the journal alone, exactly.
* A segment whose header is damaged is never cut or deleted: opening fails, and salvage
  rewrites the header (its records carry their own checksums).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vstor.errors import CorruptData
from vstor.store.journal.format import REC_VOLUME, SEGMENT_HEADER_SIZE
from vstor.store.journal.segscan import ScanEnd
from vstor.store.maintenance.checkpoint import CheckpointData, read_checkpoints
from vstor.store.state import PoolState

if TYPE_CHECKING:
    from vstor.store.backend.base import PoolBackend
    from vstor.store.journal.writer import Journal
    from vstor.store.superblock import Superblock

log = logging.getLogger("vstor.recovery")

REPAIR_HINT = "run 'vstor pool check' to see the damage"


@dataclass
class Loaded:
    """The state recovery starts from, and what it found on the way."""

    state: PoolState
    start: tuple[int, int]  # the journal position to replay from
    generation: int
    older: tuple[int, int]  # the older checkpoint copy's position (== start without one)
    next_segno: int  # the lowest segment number never used
    both_copies: bool  # both checkpoint copies valid: the next checkpoint need write only one
    problems: list[str] = field(default_factory=list)  # damage recovery worked around
    rebuilt: bool = False  # no checkpoint: rebuilt from the whole journal


@dataclass
class Recovered:
    """What :func:`recover` found: the state to open with, the checkpoint copies on disk, and the
    report ``Store.recovery`` keeps (records replayed, torn tail cut, damage worked around)."""

    loaded: Loaded
    report: dict
    needs_checkpoint: bool  # the replayed state is not in both checkpoint copies yet


def load_state(journal: Journal, meta: PoolBackend, sb: Superblock, salvage: bool = False) -> Loaded:
    """State from the newest valid checkpoint copy (blobs of the backend ``meta``), the position to
    replay from, and what is damaged. Raises CorruptData when the pool cannot be opened exactly."""
    ckset = read_checkpoints(meta, sb.uuid_bytes)
    segs = journal.segments()
    problems = ckset.problems()
    ck = ckset.newest
    if ck is None:
        return _without_checkpoint(sb.chunk_size, segs, problems, salvage)
    _check_journal(journal, ck, segs)
    older = ckset.older
    if older is not None:
        _check_journal(journal, older, segs)
    state = PoolState.from_checkpoint(sb.chunk_size, ck.meta, ck.maps, origins=ck.version >= 4)
    used = max([*segs, ck.segno - 1, ck.next_segno - 1, 0]) + 1
    older_pos = (older.segno, older.pos) if older is not None else (ck.segno, ck.pos)
    return Loaded(state, (ck.segno, ck.pos), ck.generation, older_pos, used, ckset.both_valid, problems)


def _without_checkpoint(chunk: int, segs: list[int], problems: list[str], salvage: bool) -> Loaded:
    if not segs and not problems:  # a pool made before init wrote a checkpoint, never written to
        return Loaded(PoolState(chunk), (1, SEGMENT_HEADER_SIZE), 0, (1, SEGMENT_HEADER_SIZE), 1, False)
    what = "; ".join(problems) or "no checkpoint copy exists"
    missing = _gaps(1, segs)
    if not salvage:
        raise CorruptData(f"the pool has no valid checkpoint ({what}): the array will not start; "
                          f"{REPAIR_HINT}, and 'vstor pool check --repair' to rebuild the maps from the journal")
    if missing:
        raise CorruptData(f"the pool has no valid checkpoint ({what}), and journal segments {_ranges(missing)} "
                          "are gone (reclaimed or lost), so the maps cannot be rebuilt exactly; restore the "
                          "pool from a backup or a replica")
    return Loaded(PoolState(chunk), (1, SEGMENT_HEADER_SIZE), 0, (1, SEGMENT_HEADER_SIZE),
                  max(segs, default=0) + 1, False, problems, rebuilt=True)


def _check_journal(journal: Journal, ck: CheckpointData, segs: list[int]) -> None:
    """Every segment the checkpoint needs exists, and its own segment reaches its position."""
    present = set(segs)
    if ck.segno not in present:
        if ck.pos > SEGMENT_HEADER_SIZE or any(s > ck.segno for s in segs):
            raise CorruptData(f"journal segment {ck.segno} is missing, but the checkpoint (generation "
                              f"{ck.generation}) needs it from offset {ck.pos}; acknowledged writes may be "
                              f"lost: the array will not start; {REPAIR_HINT}")
        return
    size = journal.backend.segment_size(ck.segno)
    if size < ck.pos:
        raise CorruptData(f"journal segment {ck.segno} ends at {size}, but the checkpoint (generation "
                          f"{ck.generation}) says it reached {ck.pos}: it was cut short and acknowledged "
                          f"writes may be lost; {REPAIR_HINT}")
    missing = _gaps(ck.segno, segs)
    if missing:
        raise CorruptData(f"journal segments {_ranges(missing)} are missing between the checkpoint's segment "
                          f"{ck.segno} and the newest, {max(segs)}: acknowledged writes may be lost; {REPAIR_HINT}")


def _gaps(first: int, segs: list[int]) -> list[int]:
    """Segment numbers from ``first`` to the newest that have no file."""
    present = set(segs)
    return [s for s in range(first, max(segs, default=first - 1) + 1) if s not in present]


def _ranges(nums: list[int]) -> str:
    out: list[str] = []
    for n in nums:
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def replay(state: PoolState, journal: Journal, start: tuple[int, int], end: ScanEnd) -> tuple[int, int]:
    """Apply every valid record from ``start``. Returns (records, bytes)."""
    records = nbytes = 0
    for rec in journal.scan(start[0], start[1], end):
        payload = rec.payload if rec.header.rtype == REC_VOLUME else None
        state.apply_record(rec.loc, rec.header, payload)
        records += 1
        nbytes += rec.header.total_size
    return records, nbytes


def recover(journal: Journal, meta: PoolBackend, sb: Superblock) -> Recovered:
    """Load the checkpoint, replay the journal after it, cut a torn tail and open a new segment
    for appending. The caller (``Store.open``) takes the state and, when ``needs_checkpoint``,
    writes it to both checkpoint copies."""
    t0 = time.monotonic()
    loaded = load_state(journal, meta, sb, journal.salvage)
    for why in loaded.problems:
        log.error("pool damage worked around: %s", why)
    end = ScanEnd(*loaded.start)
    records, nbytes = replay(loaded.state, journal, loaded.start, end)
    torn = None
    if end.reason:
        torn = {"segment": end.segno, "offset": end.pos, "reason": end.reason}
        if end.pos < SEGMENT_HEADER_SIZE:  # a segment whose creation a crash cut: never written
            journal.delete_segment(end.segno)
        else:
            journal.truncate_segment(end.segno, end.pos)
        log.warning("cut torn journal tail at segment %d offset %d (%s)", end.segno, end.pos, end.reason)
    elif end.unwritten:  # the space allocated for the mapped window when the daemon died
        journal.truncate_segment(end.segno, end.pos)
    elif end.pos >= SEGMENT_HEADER_SIZE and journal.local_files and end.segno in journal.segments():
        # a clean end: the cut frees the blocks allocated past the end of the file (tailspace.py)
        journal.truncate_segment(end.segno, end.pos)
    segs = journal.segments()
    new = max([*segs, loaded.next_segno - 1]) + 1
    # On a remote backend a write the last owner issued before it died (or lost the cluster)
    # may still land past where the scan ended: the new segment seals the old one there, so
    # such a write is never read (docs/architecture.md, "Faults on RADOS").
    remote = journal.backend.local_path(0) is None
    seal = end.pos if remote and end.segno == new - 1 and end.segno in segs and end.pos >= SEGMENT_HEADER_SIZE \
        else None
    journal.start_segment(new, seals_prev=seal)
    seconds = time.monotonic() - t0
    report = {"records": records, "bytes": nbytes, "seconds": round(seconds, 3),
              "mb_per_s": round(nbytes / 1e6 / seconds, 1) if seconds > 0 else None, "torn_tail": torn,
              "salvaged": journal.salvaged, "damage": loaded.problems,
              "headers_rewritten": journal.headers_rewritten, "rebuilt": loaded.rebuilt}
    if journal.salvaged:
        log.error("salvage cut damaged durable data: %s", json.dumps(journal.salvaged))
    log.info("recovered: %s", json.dumps(report))
    return Recovered(loaded, report, bool(records or torn or loaded.problems or not loaded.both_copies))
