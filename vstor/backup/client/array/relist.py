"""A client job's file list recorded again from its media (``backup catalog rebuild``).

The rows are exactly those the job recorded when it ran: the entries its stream holds (read
and checked by listing.py: offsets, extents, sha256), each ``new`` or ``changed`` against its
base job's list, and for an incremental the base's entries it did not send and its manifest
does not record as deleted, carried over (``same``) with their place in the older job's
stream; and the deletions. So the base job's list must be in the catalog first (rebuild goes
in job order). The job's bytes, stored bytes and sha256 are recorded as the job did.

Guarantees: all of a job's rows in one catalog transaction or none: a stream that does not
read back whole and checked records nothing, and the reason is returned as a problem of that
job. A stream written before manifest version 2 does not list an incremental's deletions:
its carried-over entries then include the files deleted before it, and a problem says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from vstor.backup.catalog import BackupCatalog
from vstor.backup.client.array.listing import read_listing
from vstor.errors import CorruptData, VstorError

__all__ = ["relist"]

REASON = "catalog rebuild: "  # the verify reason of a job whose file list could not be read back


def relist(catalog: BackupCatalog, job: dict, stream: Iterator[bytes]) -> list[str]:
    """Record the file list of client job ``job`` (a catalog job dict with its parts) from
    ``stream``, its whole pax stream; returns the problems (a job that has a list is left as it is)."""
    jid = job["id"]
    if catalog.client_listed(jid):
        return []
    try:
        try:
            listing = read_listing(stream, jid)
        finally:
            getattr(stream, "close", lambda: None)()  # a reader's generator puts its cartridge away
        base = _base(catalog, job)
    except VstorError as e:
        catalog.set_job(jid, verify="failed", verify_reason=f"{REASON}{e}")
        return [f"job {jid}: its file list could not be read back, none is recorded: {e}"]
    problems = []
    deleted = listing.deleted
    if deleted is None:
        deleted = []
        if job["base_job"]:
            problems.append(f"job {jid}: its stream (client manifest version 1) does not list the files deleted "
                            f"since job {job['base_job']}: its file list carries them over as if they were kept")
    sent = {e["path"] for e in listing.entries}
    gone = set(deleted)
    kept = [f | {"change": "same"} for p, f in base.items() if p not in sent and p not in gone]
    files = kept + [e | {"src_job": jid, "change": "changed" if e["path"] in base else "new"}
                    for e in listing.entries]
    sha = hashlib.sha256("".join(p["sha256"] for p in job["parts"]).encode()).hexdigest()
    fields = {"bytes": sum(e["size"] for e in listing.entries), "stored": sum(p["bytes"] for p in job["parts"]),
              "sha256": sha}
    if (job.get("verify_reason") or "").startswith(REASON):  # an earlier rebuild's failure, now read whole
        fields |= {"verify": None, "verify_reason": ""}
    catalog.import_client_files(jid, files, deleted, **fields)
    return problems


def _base(catalog: BackupCatalog, job: dict) -> dict[str, dict]:
    """The base job's entries by path (none for a full)."""
    if not job["base_job"]:
        return {}
    if not catalog.client_listed(job["base_job"]):
        raise CorruptData(f"its base job {job['base_job']} has no file list in the catalog (rebuild it from "
                          "its cartridges first)")
    return {f["path"]: f for f in catalog.client_files(job["base_job"])}
