"""``backup catalog rebuild``: the catalog again, from the job headers on the cartridges.

Like Bareos' bscan, it reads every cartridge it is given (by default every data cartridge in
the library) from the start, and for each job part it finds records the job (with its
original id, level, base job, key id, snapshot and images) and the part's exact position,
block count and hash. Then it reads each job whole, as verify does, to record each image's
size and sha256 from the manifest at the stream's end, or for a backup client's job its
whole file list (client/array/relist.py: every entry with its metadata, sha256 and stream
position, the entries carried over from its base, its deletions). So losing the catalog
never loses a backup. What is not on the media cannot come back: the policies (create them
again), the backup clients' registrations (register them again), job times other than the
creation time, and retention, which is set to REBUILT_RETENTION from the job's creation
(change it by expiring jobs by hand or letting the policy's new jobs replace them).
"""

from __future__ import annotations

import functools
import logging

from vstor.backup.catalog import BackupCatalog
from vstor.backup.client.array.relist import relist
from vstor.backup.media.cartridges import Cartridges
from vstor.backup.media.mediaio import part_summary, scan_cartridge
from vstor.backup.media.tapefile import SEAL_OVERHEAD, PartHeader
from vstor.backup.restore import Reader
from vstor.errors import FormatError, VstorError
from vstor.media.manager import MediaManager

log = logging.getLogger("vstor.backup")

REBUILT_RETENTION = 365 * 86400.0  # Bareos' default volume retention


def rebuild(media: MediaManager, catalog: BackupCatalog, carts: Cartridges, reader: Reader,
            barcodes: list[str] | None = None) -> dict:
    lib = media.lib(carts.library)
    codes = barcodes or sorted(b for b, m in lib.media.items() if not m.cleaning)
    jobs: set[int] = set()
    parts = 0
    problems: list[str] = []
    for code in codes:
        try:
            drv = carts.load_for_read(code)
            found = list(scan_cartridge(drv, functools.partial(_problem, problems, code)))
            for file, h in found:
                _, count, size, sha = part_summary(drv, file)
                payload = size - (SEAL_OVERHEAD * count if h.key_id else 0)
                if catalog.import_job(_header(h), {"part": h.part, "barcode": code, "library": carts.library,
                                                   "file": file, "first_block": 1 if count else 0,
                                                   "last_block": count, "bytes": payload, "sha256": sha,
                                                   "worm": lib.media[code].worm}):
                    parts += 1
                jobs.add(h.job)
        except (FormatError, VstorError) as e:
            problems.append(f"{code}: {e}")
        finally:
            carts.release()
    for job in sorted(jobs):  # in job order: an incremental's base first
        try:
            row = catalog.job(job)
            if row["source"].startswith("client:"):
                if row["status"] == "done":
                    problems += relist(catalog, row, reader.stream(row))
                continue
            _images(catalog, reader, job)
        except VstorError as e:
            problems.append(f"job {job}: its images could not be read back: {e}")
    log.info("catalog rebuild from %s: %d jobs, %d parts, %d problems", ", ".join(codes), len(jobs), parts,
             len(problems))
    return {"cartridges": codes, "jobs": sorted(jobs), "parts": parts, "problems": problems}


def _problem(problems: list[str], code: str, file: int, e: object) -> None:
    problems.append(f"{code} file {file}: {e}")


def _header(h: PartHeader) -> dict:
    """The job as its header tells it; the images' sums come from the manifest (_images)."""
    return {"job": h.job, "policy": h.policy, "level": h.level, "source": h.source, "base_job": h.base_job,
            "key_id": h.key_id, "created": h.created, "started": h.created, "snapshot": h.snapshot,
            "expires": h.created + REBUILT_RETENTION}


def _images(catalog: BackupCatalog, reader: Reader, job_id: int) -> None:
    """Record each image's data size and sha256 from the job's manifest (a full read)."""
    job = catalog.job(job_id)
    if all(v.get("sha256") for v in job["volumes"]) and job["volumes"]:
        return
    manifest = reader.manifest(job)
    have = {v["name"] for v in job["volumes"] if v.get("sha256")}
    total = 0
    for vol in manifest.get("volumes", []):
        total += vol["bytes"]
        if vol["name"] not in have:
            catalog.add_volume(job_id, vol["name"], vol["size"], vol["bytes"], vol["sha256"])
    catalog.set_job(job_id, bytes=total)
