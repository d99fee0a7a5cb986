"""Retention: which backup jobs expire and which cartridges may be recycled.

``plan_expiry`` only reads the catalog and returns a plan the admin tool can show ("what would
go, and why the rest stays"); ``apply_expiry`` carries it out in one catalog transaction.

Guarantees of a plan:
* A job expires only when its ``expires`` time has passed (failed jobs too).
* A job under a compliance lock (its own or its policy's) is kept until the lock's date.
* A job past retention is kept while it is needed: when an unexpired, waiting or running job builds
  on it (its chain of incrementals down to the full), or when it belongs to the newest restorable
  chain of its policy. The last full is never pruned, whatever the retention says (Bareos #2489).
* A cartridge is recycled only when every job with a part on it is expired (or, holding no job,
  it is neither scratch, nor appendable, nor already marked), it is not WORM, it is in the
  library and its state is not 'error' (Bareos never recycles Error volumes automatically).
  A recycle is a rewrite from BOT, so WORM media are refused forever and offsite media until
  they come back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vstor import units
from vstor.errors import UsageError

if TYPE_CHECKING:
    from vstor.backup.catalog import BackupCatalog

_YEARS_RE = re.compile(r"^\s*(\d+)\s*y\s*$", re.IGNORECASE)
YEAR = 365 * 86400


@dataclass
class ExpiryPlan:
    expire: list[int] = field(default_factory=list)  # job ids
    recycle: list[str] = field(default_factory=list)  # barcodes
    kept: list[tuple[int, str]] = field(default_factory=list)  # (job id, why kept although past retention)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (barcode, why not recycled)


def parse_duration(text: str) -> float:
    """Seconds in "90s", "90m", "12h", "30d", "1w" or "7y" (365-day years); a bare number is seconds."""
    m = _YEARS_RE.match(str(text))
    if m:
        return float(int(m.group(1)) * YEAR)
    try:
        return float(units.parse_duration(text, "retention"))
    except UsageError:
        raise UsageError(f"invalid duration {text!r}: use a whole number with s, m, h, d, w or y, "
                         "like 90m, 12h, 30d, 1w or 7y") from None


def _bases(job: dict, by_id: dict[int, dict]) -> Iterator[dict]:
    """The jobs ``job`` builds on, newest first, as far as the catalog has them."""
    seen = {job["id"]}
    while job["level"] != "full" and job["base_job"] in by_id and job["base_job"] not in seen:
        job = by_id[job["base_job"]]
        seen.add(job["id"])
        yield job


def _restorable(job: dict, by_id: dict[int, dict]) -> list[dict] | None:
    """The chain of a done job down to its full, or None when a link is missing or not done."""
    chain = [job, *_bases(job, by_id)]
    if all(j["status"] == "done" for j in chain) and chain[-1]["level"] == "full":
        return chain
    return None


def _protected(jobs: list[dict], by_id: dict[int, dict], now: float) -> dict[int, str]:
    """Why each job must stay: the newest restorable chain per policy, then the bases of live jobs."""
    why: dict[int, str] = {}
    newest_done: dict[str, list[dict]] = {}
    for j in jobs:  # newest first
        if j["status"] == "done" and j["policy"] not in newest_done:
            chain = _restorable(j, by_id)
            if chain is not None:
                newest_done[j["policy"]] = chain
    for policy, chain in newest_done.items():
        for j in chain:
            why.setdefault(j["id"], f"in the newest restorable chain of policy {policy!r} (up to job "
                                    f"{chain[0]['id']}): the last full is never pruned")
    for j in jobs:
        live = j["status"] in ("waiting", "running") or (j["status"] == "done" and j["expires"] > now)
        if live:
            for base in _bases(j, by_id):
                why.setdefault(base["id"], f"job {j['id']} builds on it and is still within retention")
    return why


def plan_expiry(catalog: BackupCatalog, now: float, locked: dict[int, str] | None = None) -> ExpiryPlan:
    """What expiring at ``now`` would do; changes nothing. ``locked``: jobs under a compliance
    lock (governance.job_locks), kept whatever their retention says."""
    plan = ExpiryPlan()
    jobs = catalog.jobs()
    by_id = {j["id"]: j for j in jobs}
    keep = (locked or {}) | _protected(jobs, by_id, now)
    for j in sorted(jobs, key=lambda j: j["id"]):
        if j["status"] in ("done", "failed") and j["expires"] <= now:
            if j["id"] in keep:
                plan.kept.append((j["id"], keep[j["id"]]))
            else:
                plan.expire.append(j["id"])
    gone = {j["id"] for j in jobs if j["status"] == "expired"} | set(plan.expire)
    for m in catalog.media_list():
        code = m["barcode"]
        on_it = catalog.media_jobs(code)
        if m["state"] == "recycle" or (on_it and not gone.issuperset(on_it)) or \
                (not on_it and m["state"] in ("scratch", "append")):
            continue
        if m["worm"]:
            plan.refused.append((code, "WORM media are never recycled"))
        elif m["location"] != "library" or m["state"] == "offsite":
            plan.refused.append((code, "it is offsite: bring it back into the library to recycle it"))
        elif m["state"] == "error":
            plan.refused.append((code, "error media are never recycled automatically: check the cartridge, "
                                       "then set its state to 'used' to let it be recycled"))
        else:
            plan.recycle.append(code)
    return plan


def apply_expiry(catalog: BackupCatalog, plan: ExpiryPlan) -> None:
    """Mark the plan's jobs 'expired' and its cartridges 'recycle' (the engine rewrites those from
    BOT, relabelling, on next use), in one transaction. A job that changed since the plan was made
    (no longer done or failed) is left alone, and so is a cartridge that then holds an unexpired job."""
    catalog.expire(plan.expire, plan.recycle)
