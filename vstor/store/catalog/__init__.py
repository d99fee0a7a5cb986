"""What the pool holds: volumes, consistency groups, snapshots, their policies and locks.

``volumes`` is the volume table and ``groups`` the catalog of groups and snapshots (pure state
applied from journal events); ``snapshots`` the admin-facing operations on an open Store;
``policy`` snapshot schedules and retention (pure) and ``policyrun`` the automatic snapshots
with their hooks; ``compliance`` the locks nothing shortens and the monotonic compliance clock.
"""

from __future__ import annotations

__all__ = ["compliance", "groups", "policy", "policyrun", "snapshots", "volumes"]
