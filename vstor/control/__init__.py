"""The per-pool daemon, its lock and its control socket.

``daemon`` starts one array: the Store, the FUSE mount, the maintenance loop, and the optional
endpoints (replication, NBD, backup clients, metrics). ``server`` and ``protocol`` are the control
socket; ``service`` is PoolService, composed of the parts in ``ops``, one per domain; ``host``
holds the adapters to the host (the pool lock, mounts, loop devices, fsfreeze, sd_notify) and
the daemon's process settings; ``takeover`` records a RADOS pool taken over from another host
(audit log, daemon.log); ``metrics`` serves Prometheus metrics and the dashboard, the
families of ``families`` (pure) from the live objects.
"""

from __future__ import annotations

__all__ = ["daemon", "dashboard", "families", "host", "metrics", "ops", "outagewatch", "peer", "poolfiles", "protocol",
           "server", "service", "takeover"]
