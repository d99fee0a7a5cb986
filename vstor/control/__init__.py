"""The per-pool daemon, its lock and its control socket.

``daemon`` starts one array: the Store, the FUSE mount, the maintenance loop, and the optional
endpoints (replication, NBD, backup clients, metrics). ``server`` and ``protocol`` are the control
socket; ``service`` is PoolService, composed of the ``*_ops`` parts, one per domain; ``lock``,
``mounts``, ``loop``, ``freeze`` and ``sdnotify`` are adapters to the host; ``takeover`` records a
RADOS pool taken over from another host (audit log, daemon.log).
"""

from __future__ import annotations

__all__ = ["backup_ops", "catalog_ops", "client_ops", "daemon", "dashboard", "drill_ops", "freeze", "governance_ops",
           "lock", "loop", "mallocpolicy", "media_ops", "metrics", "mounts", "nbd_ops", "outagewatch", "pair_ops",
           "peer", "poolfiles", "protocol", "pygc", "sdnotify", "server", "service", "status_ops", "takeover"]
