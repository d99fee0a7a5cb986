"""One backup job: snapshot the source, write its images to tape, record where they went.

Steps, each recorded in the catalog as it completes, so that a failure at any point leaves a
failed job (never a half-present one) and every part already written stays recorded:

1. run the policy's pre command (optional; failing, it fails the job), freeze the policy's
   mount points (optional), take a snapshot named ``backup-JOB``, thaw, run the post command
   (always: also after a failed pre or snapshot; vstor/hooks.py);
2. work out the extents: a full holds every mapped range of each image; an incremental the
   ranges changed since the base job's snapshot (``snapshot diff``), so its size follows the
   change rate, not the volume size;
3. write the pax stream to the policy's cartridges (tapefile.py, mediaio.py), spanning to the
   next cartridge at the early warning, and record each part's exact position;
4. keep this job's snapshot (the next incremental's base) and delete the previous one of the
   policy; on failure delete this job's snapshot instead.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from vstor.backup.catalog import BackupCatalog
from vstor.backup.media.cartridges import Cartridges
from vstor.backup.media.mediaio import TapeWriter
from vstor.backup.media.overlap import HashWorker
from vstor.backup.media.tapefile import PartHeader, VolumeSource, pax_stream
from vstor.backup.rules.policy import hooks_of
from vstor.control.host.freeze import frozen
from vstor.errors import NotFound, Refused, VstorError
from vstor.faults import NO_FAULTS, Faults
from vstor.hooks import HookRunner, ShellRunner, around
from vstor.store.adminops import Progress
from vstor.store.catalog import snapshots
from vstor.store.reads.ahead import StreamAhead
from vstor.store.store import Store

log = logging.getLogger("vstor.backup")

READ_AHEAD = 16 << 20  # bytes of an image asked for past a sequential read (4 pieces of 4 MiB)


def snapshot_name(job: int) -> str:
    return f"backup-{job}"


@dataclass
class Image:
    """A snapshot image as a volume source, counting what it reads for the progress meter.

    The pax stream reads each extent in order, in pieces of up to 4 MiB; once a read continues
    the one before, the image's next READ_AHEAD bytes are asked for (``Store.prefetch``), so
    that on an aged volume the disk fetches the next pieces' scattered small records while
    this one is written out (reads/ahead.py; in process, a full backup of a cold 1 GiB volume
    aged by 100,000 random 4 KiB writes ran at 139-166 MiB/s against 126-145 without,
    docs/benchmarks.md section 9). Only the small records are asked for: a piece's large
    records are read whole by the kernel in one request each, and asking for them too gained
    nothing, also with the pool disk reading only 128 KiB ahead (same section)."""

    store: Store
    vid: int
    sid: int
    size: int
    done: Callable[[int], None]
    ahead: StreamAhead = field(default_factory=lambda: StreamAhead(READ_AHEAD))

    def read(self, offset: int, length: int) -> bytes | memoryview:
        data = self.store.read(self.vid, offset, length, sid=self.sid)
        self.done(len(data))
        nxt = self.ahead.next_range(offset, length, self.size)
        if nxt is not None:
            self.store.prefetch(self.vid, *nxt, sid=self.sid, large=False)
        return data


class JobWriter:
    def __init__(self, store: Store, carts: Cartridges, catalog: BackupCatalog, faults: Faults = NO_FAULTS,
                 hooks: HookRunner | None = None) -> None:
        self.store, self.carts, self.catalog, self.faults = store, carts, catalog, faults
        self.hooks: HookRunner = hooks or ShellRunner(faults)

    def run(self, job: int, policy: dict, level: str, base: dict | None, key: bytes | None, key_id: int | None,
            progress: Progress = None) -> dict:
        """Write job ``job`` (already in the catalog, running). Returns the catalog fields to set."""
        source = policy["source"]
        def take() -> dict:
            with frozen(policy.get("freeze") or []):
                return snapshots.create(self.store, source, snapshot_name(job))

        env = {"VSTOR_GROUP": source, "VSTOR_SNAPSHOT": snapshot_name(job), "VSTOR_POLICY": policy["name"],
               "VSTOR_JOB": str(job)}
        snap = around(hooks_of(policy), self.hooks, env, take)
        self.catalog.set_job(job, snapshot=snap["name"])
        sid, members = snap["id"], snapshots.get(self.store, source, snap["name"]).members
        changed = self._changed(source, base, snap["name"]) if level == "incremental" else None
        total = 0
        volumes: list[VolumeSource] = []
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress:
                progress(done[0], total)

        for m in members:
            ext = snapshots.extents(self.store, sid, m.vid) if changed is None else changed.get(m.name, [])
            total += sum(n for _o, n in ext)
            volumes.append(VolumeSource(m.name, m.size, ext, Image(self.store, m.vid, sid, m.size, tick).read))
        meta = {"job": str(job), "policy": policy["name"], "level": level, "snapshot": snap["name"],
                "base": str(base["id"]) if base else ""}

        def header(part: int, barcode: str) -> bytes:
            return PartHeader(job, part, policy["name"], level, source, snap["name"], self.store.clock.time(),
                              base["id"] if base else None, key_id,
                              [{"name": m.name, "size": m.size} for m in members],
                              self.store.sb.uuid, barcode).encode()

        drv = self.carts.load_for_write(policy["media"])
        manifest: dict = {}
        with HashWorker() as hashes:  # the two sha256 passes overlap the reads and writes
            writer = TapeWriter(drv, lambda: self.carts.next_for_write(policy["media"]), header, key=key, job=job,
                                new_hash=hashes.sha256)
            for chunk in pax_stream(source, volumes, meta, manifest, new_hash=hashes.sha256):
                self.faults.hit("backup.write")
                writer.write(chunk)
            places = writer.close()
        stored = 0
        for p in places:
            self.catalog.add_part(job, p.part, p.barcode, self.carts.library, p.file, p.first_block, p.last_block,
                                  p.bytes, p.sha256)
            row = self.catalog.media(p.barcode) or {}
            self.catalog.set_media(p.barcode, bytes=(row.get("bytes") or 0) + p.bytes,
                                   last_written=self.store.clock.time())
            stored += p.bytes
        for vol in manifest["volumes"]:  # each image's data and its sha256, as the archive's manifest has them
            self.catalog.add_volume(job, vol["name"], vol["size"], vol["bytes"], vol["sha256"])
        self.carts.release()
        job_sha = hashlib.sha256("".join(p.sha256 for p in places).encode()).hexdigest()
        return {"bytes": sum(v["bytes"] for v in manifest["volumes"]), "stored": stored, "sha256": job_sha}

    def _changed(self, source: str, base: dict | None, snap: str) -> dict[str, list[tuple[int, int]]]:
        if base is None or not base.get("snapshot"):
            raise VstorError("an incremental needs its base job's snapshot")
        try:
            diff = snapshots.diff(self.store, source, base["snapshot"], snap)
        except NotFound:
            raise VstorError(f"the snapshot of base job {base['id']} ({source}/{base['snapshot']}) is gone, so "
                             "an incremental cannot be taken: run a full ('vstor backup run POLICY --level full')"
                             ) from None
        return {d["volume"]: [(s, e - s) for s, e in d["ranges"]] for d in diff}


def drop_snapshot(store: Store, source: str, job: int) -> None:
    """Delete job ``job``'s snapshot if it still exists (no longer a base, or the job failed)."""
    try:
        snapshots.delete(store, source, snapshot_name(job))
    except NotFound:
        pass
    except Refused as e:  # an admin locked it: it stays, and the job's outcome does not change
        log.warning("backup job %d: its snapshot stays: %s", job, e)
