"""Recovery at open: load the checkpoint, replay the journal after it, cut a torn tail.

After a crash the newest segment may end in a partly written record; its checksums fail
and everything from it on is cut (such a record was never acknowledged by a completed
fsync, because fsync returns only after fdatasync). Appending always resumes in a new
segment, so a position is never written twice.
"""

from __future__ import annotations

import json
import logging
import time

from vstor.store.checkpoint import read_checkpoint
from vstor.store.format import REC_VOLUME, SEGMENT_HEADER_SIZE
from vstor.store.segread import ScanEnd
from vstor.store.state import PoolState

log = logging.getLogger("vstor.recovery")


def load_state(store: object) -> tuple[PoolState, tuple[int, int], int]:
    """State from the checkpoint (or empty), the position to replay from, and the generation."""
    from vstor.store.store import Store

    assert isinstance(store, Store)
    ck = read_checkpoint(store.paths["meta"], store.sb.uuid_bytes)
    if ck is None:
        segs = store.journal.segments()
        return PoolState(store.sb.chunk_size), (segs[0] if segs else 1, SEGMENT_HEADER_SIZE), 0
    state = PoolState.from_checkpoint(store.sb.chunk_size, ck.meta, ck.maps, origins=ck.version >= 4)
    return state, (ck.segno, ck.pos), ck.generation


def replay(state: PoolState, journal: object, start: tuple[int, int], end: ScanEnd) -> tuple[int, int]:
    """Apply every valid record from ``start``. Returns (records, bytes)."""
    records = nbytes = 0
    for rec in journal.scan(start[0], start[1], end):  # type: ignore[attr-defined]
        payload = rec.payload if rec.header.rtype == REC_VOLUME else None
        state.apply_record(rec.loc, rec.header, payload)
        records += 1
        nbytes += rec.header.total_size
    return records, nbytes


def recover(store: object) -> dict:
    from vstor.store.store import Store

    assert isinstance(store, Store)
    t0 = time.monotonic()
    state, start, gen = load_state(store)
    end = ScanEnd(*start)
    records, nbytes = replay(state, store.journal, start, end)
    torn = None
    if end.reason:
        torn = {"segment": end.segno, "offset": end.pos, "reason": end.reason}
        if end.pos < SEGMENT_HEADER_SIZE:
            store.journal.delete_segment(end.segno)
        else:
            store.journal.truncate_segment(end.segno, end.pos)
        log.warning("cut torn journal tail at segment %d offset %d (%s)", end.segno, end.pos, end.reason)
    elif end.unwritten:  # the space allocated for the mapped window when the daemon died
        store.journal.truncate_segment(end.segno, end.pos)
    store.state = state
    store.ckpt_generation, store.ckpt_position = gen, start
    segs = store.journal.segments()
    store.journal.start_segment(max([*segs, start[0] - 1, 0]) + 1)
    seconds = time.monotonic() - t0
    report = {"records": records, "bytes": nbytes, "seconds": round(seconds, 3),
              "mb_per_s": round(nbytes / 1e6 / seconds, 1) if seconds > 0 else None, "torn_tail": torn,
              "salvaged": store.journal.salvaged}
    if store.journal.salvaged:
        log.error("salvage cut damaged durable data: %s", json.dumps(store.journal.salvaged))
    log.info("recovered: %s", json.dumps(report))
    if records or torn:
        store.checkpoint()
    return report
