"""The record of a takeover (``array start --takeover`` fenced a live owner on another host):
an ``array.takeover`` entry in the pool's audit log (vstor/backup/audit.py, a state file of
the pool: in the cluster for a RADOS pool) when the pool has one, and always one daemon.log
line naming the fenced owner."""

from __future__ import annotations

import logging
import os
import socket

from vstor.backup.audit import AUDIT_FILE, AuditLog, current_actor
from vstor.clock import Clock
from vstor.store.backend.statefiles import PoolFiles

__all__ = ["TAKEOVER_ACTION", "record_takeover"]

TAKEOVER_ACTION = "array.takeover"


def record_takeover(backup_files: PoolFiles, clock: Clock, location: str, fenced: dict,
                    log: logging.Logger) -> dict:
    """Record that this host fenced ``fenced`` (the old holder record) and took ``location``;
    ``backup_files``: the pool's backup state files, where its audit log is if it has one.
    Returns the details recorded."""
    details = {"location": location, "host": socket.gethostname(), "pid": os.getpid(),
               "fenced": {k: fenced.get(k) for k in ("desc", "client", "addrs", "cookie", "host", "pid")}}
    log.warning("takeover of %s: fenced %s (RADOS %s at %s, blocklisted) and took the pool over; replaying its "
                "journal", location, fenced.get("desc"), fenced.get("client"), ", ".join(fenced.get("addrs") or []))
    if backup_files.exists(AUDIT_FILE):
        AuditLog(backup_files, clock).append(current_actor(), TAKEOVER_ACTION, details)
    return details
