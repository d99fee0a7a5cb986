"""Pure: what ``pool migrate`` copies from a local pool directory, the in-progress marker it
leaves at the destination, and its progress lines.

Every regular file of the source is one of (:func:`classify`):

* ``segment``: ``journal/NNNNNNNNNN.seg``, copied through the backends' segment calls;
* ``blob``: the checkpoint copies (``meta/checkpoint.a``, ``.b`` and the legacy ``meta/checkpoint``);
* ``superblock``: ``pool.json`` and ``meta/superblock.copy``, written last;
* ``other``: every other pool file (consumers, governance, pair, NBD, media, backup, log...),
  which goes where ``placement.place_other_file`` puts it;
* ``skip``: what belongs to the running host only (``lock``, ``control.sock``) and the
  ``*.tmp`` files an interrupted atomic replace leaves.

The marker (MARKER_VERSION) is a JSON blob ``migrate.json`` (``superblock.MIGRATE_MARKER``)
with ``format`` "vstor-migrate", ``version``, ``source`` (the local directory), ``uuid`` (the
pool's), ``started`` (Unix time) and ``checksum`` (sha256 hex of the canonical JSON without it,
as vstor/checkedjson.py). It is created (exclusively) before the first object is copied and
deleted after ``pool.json``, the last object, is written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from vstor.clock import Clock
from vstor.store.maintenance.checkpoint import COPIES, LEGACY, META
from vstor.store.superblock import COPY_BLOB, SUPERBLOCK
from vstor.units import format_size

__all__ = ["MARKER_FORMAT", "MARKER_VERSION", "PROGRESS_SECONDS", "Meter", "classify", "decode_marker",
           "encode_marker", "segment_number"]

MARKER_FORMAT = "vstor-migrate"
MARKER_VERSION = 1
PROGRESS_SECONDS = 5.0  # a progress line at most this often
BLOBS = tuple(META + n for n in (*COPIES, LEGACY))
SUPERBLOCKS = (SUPERBLOCK, COPY_BLOB)
HOST_ONLY = ("lock", "control.sock")


def segment_number(rel: str) -> int | None:
    """The segment number of ``journal/NNNNNNNNNN.seg``, else None."""
    head, _, name = rel.partition("/")
    if head != "journal" or not name.endswith(".seg") or not name[:-4].isdigit() or len(name) != 14:
        return None
    return int(name[:-4])


def classify(rel: str) -> str:
    """``segment``, ``blob``, ``superblock``, ``other`` or ``skip`` for a file of the pool
    (``rel``: its path relative to the pool directory, with "/")."""
    if rel in SUPERBLOCKS:
        return "superblock"
    if rel in BLOBS:
        return "blob"
    if segment_number(rel) is not None:
        return "segment"
    if rel in HOST_ONLY or rel.endswith(".tmp") or rel.startswith("journal/"):
        return "skip"
    return "other"


def _checksum(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def encode_marker(source: str, uuid: str, started: float) -> bytes:
    doc = {"format": MARKER_FORMAT, "version": MARKER_VERSION, "source": source, "uuid": uuid,
           "started": started}
    doc["checksum"] = _checksum(doc)
    return json.dumps(doc, sort_keys=True, indent=1).encode()


def decode_marker(raw: bytes) -> dict | None:
    """The marker's fields, or None when ``raw`` is not a valid marker."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("format") != MARKER_FORMAT or doc.get("version") != MARKER_VERSION \
            or doc.get("checksum") != _checksum(doc):
        return None
    return doc


class Meter:
    """Counts the bytes copied (and read back) and calls ``emit`` with a progress line at most
    every ``every`` seconds of ``clock``, and once at the end (:meth:`done`)."""

    def __init__(self, total: int, clock: Clock, emit: Callable[[str], None], every: float = PROGRESS_SECONDS) -> None:
        self.total, self.clock, self.emit, self.every = total, clock, emit, every
        self.bytes = 0
        self.start = self.last = clock.monotonic()

    def add(self, n: int) -> None:
        self.bytes += n
        now = self.clock.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.emit(self.line(now))

    def rate(self, now: float) -> float:
        return self.bytes / (now - self.start) if now > self.start else 0.0

    def line(self, now: float) -> str:
        pct = 100 * self.bytes // self.total if self.total else 100
        return (f"migrate: {format_size(self.bytes, approx=True)} of {format_size(self.total, approx=True)} "
                f"copied ({pct}%), {format_size(self.rate(now), approx=True)}/s")

    def done(self) -> float:
        """Emit the last line; returns the mean rate (bytes/s)."""
        now = self.clock.monotonic()
        self.emit(self.line(now))
        return self.rate(now)
