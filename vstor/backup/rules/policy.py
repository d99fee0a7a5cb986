"""Backup policies: what to back up, when, to which media, and how long to keep it.

Pure: validation and normalization of the policy document the catalog stores. The engine
checks what needs the pool (the source, the library, the media) when a policy is created.

A policy::

    {"name": "nightly", "source": "db", "schedule": "0 2 * * *", "level": "incremental",
     "full_every": 604800, "library": "lib1", "media": ["VT0001L9", ...],
     "retention": 2592000, "encrypt": false, "freeze": ["/mnt/db"], "verify": true,
     "pre": "psql -c CHECKPOINT", "post": "", "hook_timeout": 60,
     "retries": 0, "retry_delay": 0}

``pre``/``post`` (shell commands around the job's snapshot, vstor/hooks.py) and
``hook_timeout`` came later: a policy stored without them reads as "", "" and 60.

``source`` is a group or a volume, or ``client:NAME`` for a backup client (client/). ``retries``
and ``retry_delay`` (seconds): how often and how far apart a client run that failed because the
client was unreachable or the connection dropped is tried again.

``level`` is what a scheduled run takes; an incremental run takes a full instead when the
policy has no restorable full yet, or when ``full_every`` seconds have passed since the last.
"""

from __future__ import annotations

import re

from vstor.errors import UsageError
from vstor.hooks import DEFAULT_TIMEOUT, Hooks
from vstor.units import parse_duration

LEVELS = ("full", "incremental")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def make_policy(name: str, source: str, library: str, media: list[str], schedule: str | None = None,
                level: str = "full", full_every: str | None = None, retention: str = "30d",
                encrypt: bool = False, freeze: list[str] | None = None, verify: bool = True,
                pre: str | None = None, post: str | None = None, hook_timeout: str | float | None = None,
                retries: int = 0, retry_delay: str | None = None) -> dict:
    """A validated policy document (UsageError names the first bad field)."""
    from vstor.backup.rules.schedule import parse_cron

    if not NAME_RE.match(name):
        raise UsageError(f"invalid policy name {name!r}: use letters, digits, '_', '.' and '-' (at most 64)")
    if level not in LEVELS:
        raise UsageError(f"invalid level {level!r}: use full or incremental")
    if not media:
        raise UsageError("a policy needs media: give --media BARCODE[-BARCODE]")
    timeout = (float(hook_timeout) if isinstance(hook_timeout, int | float)
               else parse_duration(hook_timeout, "--hook-timeout") if hook_timeout else DEFAULT_TIMEOUT)
    if timeout <= 0:
        raise UsageError("--hook-timeout must be above 0, like 60s")
    if not 0 <= int(retries) <= 100:
        raise UsageError(f"--retries {retries}: use 0 to 100")
    return {"name": name, "source": source, "library": library, "media": list(media),
            "schedule": parse_cron(schedule) if schedule else None, "level": level,
            "full_every": parse_duration(full_every, "--full-every") if full_every else None,
            "retention": parse_duration(retention, "--retention"), "encrypt": bool(encrypt),
            "freeze": list(freeze or []), "verify": bool(verify), "pre": pre or "", "post": post or "",
            "hook_timeout": timeout,
            "retries": int(retries), "retry_delay": parse_duration(retry_delay, "--retry-delay") if retry_delay else 0}


def hooks_of(policy: dict) -> Hooks:
    """The pre/post commands of a stored policy (none in a policy stored before they existed)."""
    return Hooks(policy.get("pre") or "", policy.get("post") or "", policy.get("hook_timeout") or DEFAULT_TIMEOUT)


def level_for(policy: dict, asked: str | None, last_full: dict | None, last_done: dict | None,
              now: float) -> str:
    """The level a run takes: ``asked`` (or the policy's), but a full when an incremental has
    nothing to build on or the last full is older than ``full_every``."""
    level = asked or policy["level"]
    if level not in LEVELS:
        raise UsageError(f"invalid level {level!r}: use full or incremental")
    if level == "full" or last_full is None or last_done is None:
        return "full"
    every = policy.get("full_every")
    if every and now - (last_full.get("started") or 0) >= every:
        return "full"
    return "incremental"
