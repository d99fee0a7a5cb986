"""The control operations PoolService (control/service.py) is composed of: one mixin per domain.

``status`` (``vstor status``: is the array healthy; what can be said of a stopped pool),
``catalog`` (consistency groups and snapshots), ``pair`` (replication pairs), ``media``
(tape and optical libraries), ``backup`` (the backup engine, the audit log, backup keys),
``client`` (backup clients: the registry, a client job's file list, restore and verify of
a client's files), ``drill`` (restore drills), ``governance`` (the guard every control
request passes, admin enrolment, approvals, compliance locks) and ``nbd`` (NBD exports).
"""

from __future__ import annotations

__all__ = ["backup", "catalog", "client", "drill", "governance", "media", "nbd", "pair", "status"]
