"""The backup engine: policies, schedules, jobs to tape, a catalog, verify, restore,
retention, the audit log and backup keys.

Layers, pure first:

* ``rules``: policy documents, cron schedules, expiry and recycling plans, and the headline
  figures (its own package);
* ``media``: the on-media format (a text header block and a POSIX pax stream with GNU sparse
  members, optionally AES-GCM sealed) and writing and reading job parts on emulated tape drives
  (its own package);
* ``catalog`` (SQLite; ``sqlitefile``: its connection and transactions, shared with ``drill.catalog``;
  ``catalogdb``: where the database is, a local file or RADOS through Ceph's SQLite VFS),
  ``audit`` (a hash-chained log), ``keys`` (key ids, never keys);
* ``jobs``, ``restore``, ``engine``: the job runner, restore and verify, and the facade the
  daemon and the control socket use;
* ``drill``: restore drills (its own package);
* ``governance``: guarded control ops, enrolled admins and approvals (its own package);
  compliance locks are in ``vstor.store.catalog.compliance``;
* ``rebuild``: the catalog again from the cartridges' job headers (like Bareos' bscan);
* ``client``: backup clients, hosts that send their files over mutual TLS (its own package).
"""

from __future__ import annotations

__all__ = ["audit", "catalog", "catalogdb", "client", "drill", "engine", "governance", "jobs", "keys",
           "media", "rebuild", "restore", "rules", "sqlitefile"]
