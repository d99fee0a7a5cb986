"""The rules backups follow: what to back up and when, what to expire, and how it went.

``policy`` validates and normalizes the policy documents the catalog stores; ``schedule``
evaluates their cron schedules in UTC (cronsim) and runs the scheduler thread on an injected
clock; ``retention`` plans which jobs expire and which cartridges may be recycled;
``report`` computes the headline figures users track. None of them touches media or sockets.
"""

from __future__ import annotations

__all__ = ["policy", "report", "retention", "schedule"]
