"""Restore and verify: read a job's parts back from tape.

A restore resolves the job's chain (its full, then each incremental up to it), creates one new
volume per image (``NAME`` for a one-volume job, ``NAME-VOLUME`` for a group's), and applies
the chain's extents in order, so the result equals the source at the job's snapshot, byte for
byte. Its duration and throughput are recorded. A restore that fails deletes the volumes it
created and records the failure.

Verify reads every part back, checks the hash of the records as written (the catalog's) and
the sha256 of every image's data against the manifest and the catalog.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from vstor.backup.catalog import BackupCatalog
from vstor.backup.keys import BackupKeys
from vstor.backup.media.cartridges import Cartridges
from vstor.backup.media.mediaio import part_sha256, read_part
from vstor.backup.media.tapefile import read_stream
from vstor.errors import AlreadyExists, NotFound, VstorError
from vstor.store.store import Store

log = logging.getLogger("vstor.backup")


class Reader:
    def __init__(self, store: Store, catalog: BackupCatalog, keys: BackupKeys,
                 cartridges: Callable[[str], Cartridges]) -> None:
        self.store, self.catalog, self.keys, self.cartridges = store, catalog, keys, cartridges

    def stream(self, job: dict) -> Iterator[bytes]:
        """Job ``job``'s stream (a catalog job dict with its parts), read whole in part order."""
        return self._stream(job)

    def _stream(self, job: dict) -> Iterator[bytes]:
        """The job's tar stream: its parts in order, each read from its cartridge."""
        key = self.keys.key(job["key_id"]) if job.get("key_id") else None
        for part in job["parts"]:
            carts = self.cartridges(part["library"])
            try:
                drv = carts.load_for_read(part["barcode"])
                yield from read_part(drv, part["file"], key, job["id"], part["part"])
            finally:
                carts.release()

    # -- restore ------------------------------------------------------------------------------
    def targets(self, job: dict, to: str) -> dict[str, str]:
        vols = job["volumes"]
        return {v["name"]: to if len(vols) == 1 else f"{to}-{v['name']}" for v in vols}

    def restore(self, job_id: int, to: str, progress: Callable[[int, int], None] | None = None) -> dict:
        chain = [self.catalog.job(j["id"]) for j in self.catalog.chain(job_id)]  # with parts and images
        last = chain[-1]
        names = self.targets(last, to)
        for target in names.values():
            try:
                self.store.volume(target)
            except NotFound:
                continue
            raise AlreadyExists(f"volume {target!r} already exists: restore to a new name (--to)")
        sizes = {v["name"]: v["size"] for v in last["volumes"]}
        total = sum(j["bytes"] or 0 for j in chain)
        started = self.store.clock.time()
        t0 = self.store.clock.monotonic()
        made: list[str] = []
        done = [0]
        try:
            vids = {}
            for name, target in names.items():
                vids[name] = self.store.create_volume(target, sizes[name]).id
                made.append(target)

            def apply(name: str, offset: int, data: bytes) -> None:
                if name not in vids or offset >= sizes[name]:
                    return  # a volume that left the group, or a range past a later shrink
                piece = data[: sizes[name] - offset]
                self.store.write(vids[name], offset, piece)
                done[0] += len(data)
                if progress:
                    progress(done[0], total)

            for job in chain:
                read_stream(self._stream(job), apply)
            self.store.sync()
        except VstorError as e:
            for target in made:
                try:
                    self.store.delete_volume(target)
                except VstorError:
                    log.error("restore of job %d failed and volume %s could not be removed", job_id, target)
            self.catalog.add_restore(job_id, to, started, self.store.clock.time(), done[0], "failed", str(e))
            raise
        seconds = max(self.store.clock.monotonic() - t0, 1e-6)
        rid = self.catalog.add_restore(job_id, to, started, self.store.clock.time(), done[0], "done")
        return {"restore": rid, "job": job_id, "chain": [j["id"] for j in chain], "volumes": list(names.values()),
                "bytes": done[0], "seconds": round(seconds, 3), "mb_per_s": round(done[0] / 1e6 / seconds, 1)}

    def manifest(self, job: dict) -> dict:
        """Read job ``job`` whole and return the manifest at its end (every checksum checked)."""
        return read_stream(self._stream(job), lambda _n, _o, _d: None)

    # -- verify -------------------------------------------------------------------------------
    def verify(self, job_id: int) -> dict:
        """Read the job back and check every checksum; the result is recorded on the job."""
        job = self.catalog.job(job_id)
        problems: list[str] = []
        try:
            for part in job["parts"]:
                carts = self.cartridges(part["library"])
                try:
                    got = part_sha256(carts.load_for_read(part["barcode"]), part["file"])
                finally:
                    carts.release()
                if got != part["sha256"]:
                    problems.append(f"part {part['part']} on {part['barcode']} (tape file {part['file']}) does not "
                                    "read back as written")
            manifest = self.manifest(job)
            want = {v["name"]: v["sha256"] for v in job["volumes"]}
            for vol in manifest.get("volumes", []):
                if want.get(vol["name"]) != vol["sha256"]:
                    problems.append(f"image {vol['name']} differs from what the catalog recorded")
        except VstorError as e:  # CorruptData is one
            problems.append(str(e))
        result = "failed" if problems else "ok"
        self.catalog.set_job(job_id, verify=result, verify_time=self.store.clock.time(),
                             verify_reason="; ".join(problems))
        return {"job": job_id, "verify": result, "problems": problems}
