"""Journal consumers: named readers with durable positions.

The journal keeps every segment until all registered consumers have read past it. The
data store itself consumes through checkpoints; replication and backup jobs register here
and read records in order with :func:`read_records`, then :meth:`Consumers.commit` the
position they have safely handled. Positions live in the pool's state files (PoolFiles:
local files or RADOS objects) ``meta/consumers.json`` and its copy ``meta/consumers.json.copy``
(each an atomic replace, sealed with an xxh3 checksum), so a consumer
resumes exactly where it committed after a restart or crash, and one damaged copy is
survived: the other is read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from vstor.checkedjson import BadSeal, Seal
from vstor.errors import AlreadyExists, FormatError, NotFound
from vstor.store.journal.format import (
    REC_RELOCATE,
    REC_TRIM,
    REC_VOLUME,
    REC_WRITE,
    SEGMENT_HEADER_SIZE,
    loc_pos,
    loc_segno,
)
from vstor.store.journal.segscan import ScanEnd

if TYPE_CHECKING:
    from vstor.store.backend.statefiles import PoolFiles
    from vstor.store.journal.segscan import ScannedRecord
    from vstor.store.journal.writer import Journal


class JournalSource(Protocol):
    """What reading the journal in order needs: the journal, the consumers' positions and the
    payload decoder (an open :class:`~vstor.store.store.Store` is one)."""

    journal: Journal
    consumers: Consumers

    def decode_payload(self, rec: ScannedRecord) -> bytes: ...

FILE = "consumers.json"
COPY = "consumers.json.copy"  # written after FILE with the same bytes; read when FILE is damaged
VERSION = 1


SEAL = Seal("xxh3")  # xxh3-64 of the sorted JSON; written compact, keys sorted (vstor/checkedjson.py)


def encode_positions(pos: dict[str, tuple[int, int]]) -> bytes:
    return SEAL.seal({"consumers": {k: list(v) for k, v in sorted(pos.items())}, "version": VERSION})


def decode_positions(raw: bytes, path: str) -> dict[str, tuple[int, int]]:
    """Parse one copy; FormatError says what is wrong. A file without a version is the
    unchecked form written before, read as it is."""
    try:
        data = SEAL.parse(raw)
        if "version" not in data:  # the old form: {name: [segno, pos]}
            return {k: (int(v[0]), int(v[1])) for k, v in data.items()}
        SEAL.check(data, raw)
        if data["version"] != VERSION:
            raise FormatError(f"{path} has version {data['version']}; this vstor reads {VERSION}")
        return {k: (int(v[0]), int(v[1])) for k, v in data["consumers"].items()}
    except BadSeal as e:
        raise FormatError(e.describe(path)) from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise FormatError(f"{path} is unreadable: {e}") from None


def _read(files: PoolFiles, name: str) -> dict[str, tuple[int, int]] | str | None:
    try:
        raw = files.read(name)
        return None if raw is None else decode_positions(raw, files.where(name))
    except (OSError, FormatError) as e:
        return str(e)


def consumer_problems(meta: PoolFiles) -> list[str]:
    """What is wrong with either copy of the consumer positions (pool check); ``meta``: the
    pool's ``meta`` files."""
    main, copy = _read(meta, FILE), _read(meta, COPY)
    out = [why for why in (main, copy) if isinstance(why, str)]
    if (main is None) != (copy is None):
        out.append(f"journal consumer positions: meta/{FILE if main is None else COPY} is missing")
    return out


class Consumers:
    def __init__(self, meta: PoolFiles) -> None:
        """``meta``: the pool's ``meta`` files (``store.files.sub("meta")``)."""
        self.files = meta
        self._lock = threading.Lock()
        main, copy = _read(meta, FILE), _read(meta, COPY)
        if isinstance(main, str) and isinstance(copy, str):
            raise FormatError(f"journal consumer positions are damaged in both copies ({main}; {copy}); "
                              "replication pairs cannot resume: run 'vstor pool check'")
        good = main if isinstance(main, dict) else copy  # FILE is written first: the newer when both are valid
        self._pos: dict[str, tuple[int, int]] = dict(good) if isinstance(good, dict) else {}

    def positions(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            return dict(self._pos)

    def register(self, name: str, position: tuple[int, int]) -> None:
        with self._lock:
            if name in self._pos:
                raise AlreadyExists(f"journal consumer {name!r} is already registered")
            self._pos[name] = position
            self._save()

    def unregister(self, name: str) -> None:
        with self._lock:
            if self._pos.pop(name, None) is None:
                raise NotFound(f"no journal consumer named {name!r}")
            self._save()

    def position(self, name: str) -> tuple[int, int]:
        with self._lock:
            try:
                return self._pos[name]
            except KeyError:
                raise NotFound(f"no journal consumer named {name!r}") from None

    def commit(self, name: str, position: tuple[int, int]) -> None:
        with self._lock:
            if name not in self._pos:
                raise NotFound(f"no journal consumer named {name!r}")
            self._pos[name] = max(self._pos[name], position)
            self._save()

    def _save(self) -> None:
        raw = encode_positions(self._pos)
        self.files.write(FILE, raw)
        self.files.write(COPY, raw)

    def rewrite(self) -> None:
        """Write both copies from the positions in use (pool check --repair)."""
        with self._lock:
            self._save()


@dataclass(frozen=True)
class JournalEntry:
    """One host-visible journal record, decoded."""

    kind: str  # "write", "trim" or "volume"
    group: int
    seq: int
    volume: int
    offset: int
    length: int
    data: bytes  # write: the payload; volume: the JSON event; trim: empty
    next_position: tuple[int, int]
    tstamp: int = 0  # nanoseconds since the epoch, when the record was written


def read_records(store: JournalSource, name: str, limit: int = 256, durable_only: bool = True
                 ) -> Iterator[JournalEntry]:
    """Yield up to ``limit`` records after consumer ``name``'s position, in journal order.

    GC relocations are skipped (they change no content). With ``durable_only`` only records
    already on stable storage are returned, so a reader never sees a write a crash could undo.
    """
    segno, pos = store.consumers.position(name)
    pos = max(pos, SEGMENT_HEADER_SIZE)
    stop = store.journal.durable_position() if durable_only else store.journal.tail()
    end = ScanEnd(segno, pos)
    count = 0
    last: JournalEntry | None = None  # yielded once the scan passes what follows it
    for rec in store.journal.scan(segno, pos, end):
        here = (loc_segno(rec.loc), loc_pos(rec.loc))
        if last is not None:  # it ends where this record starts (past any padding after it), but
            # never past the durable end: a commit marker in front of a record not yet durable
            # belongs to that record's write, which a crash may cut
            yield replace(last, next_position=min(here, stop))
            last = None
        if here >= stop or count >= limit:
            return
        nxt = (here[0], here[1] + rec.header.total_size)
        h = rec.header
        if h.rtype == REC_RELOCATE:
            continue
        count += 1
        if h.rtype == REC_VOLUME:
            last = JournalEntry("volume", h.group, h.seq, h.volume, h.offset, h.length, rec.payload, nxt)
        elif h.nframes == 0:
            last = JournalEntry("trim", h.group, h.seq, h.volume, h.offset, h.length, b"", nxt)
        else:
            last = JournalEntry("write", h.group, h.seq, h.volume, h.offset, h.length,
                                store.decode_payload(rec), nxt)
    if last is not None:  # the journal's last record: past the padding after it too
        yield replace(last, next_position=max(last.next_position, min((end.segno, end.pos), stop)))


def read_group(store: JournalSource, start: tuple[int, int], group: int, max_bytes: int = 8 << 20,
               want_data: bool = True) -> tuple[list[JournalEntry], tuple[int, int]]:
    """The durable WRITE and TRIM records of ``group`` after journal position ``start``, in
    journal (= sequence) order, up to about ``max_bytes`` of data, and the position after the
    last record read (records of other groups are passed over). ``want_data=False`` skips
    decoding payloads (data is then empty), for folding records into a dirty bitmap."""
    segno, pos = start
    pos = max(pos, SEGMENT_HEADER_SIZE)
    stop = store.journal.durable_position()
    out: list[JournalEntry] = []
    position, size = (segno, pos), 0
    end = ScanEnd(segno, pos)
    for rec in store.journal.scan(segno, pos, end):
        here = (loc_segno(rec.loc), loc_pos(rec.loc))
        if here >= stop or size >= max_bytes:
            position = min(here, stop)  # past any padding after the last record read (as read_records)
            break
        position = (here[0], here[1] + rec.header.total_size)
        h = rec.header
        if h.group != group or h.rtype not in (REC_WRITE, REC_TRIM):
            continue
        if h.rtype == REC_TRIM:
            out.append(JournalEntry("trim", h.group, h.seq, h.volume, h.offset, h.length, b"", position, h.tstamp))
        else:
            data = store.decode_payload(rec) if want_data else b""
            out.append(JournalEntry("write", h.group, h.seq, h.volume, h.offset, h.length, data, position, h.tstamp))
            size += h.length
    else:  # every record up to the end read: pass the padding (REC_PAD) after the last one too
        position = max(position, min((end.segno, end.pos), stop))
    return out, position
