"""The ``vstor`` admin tool.

``main`` builds the parser from the ``*_cmd`` modules (one per command family), turns errors into
one line and an exit code, and imports heavy modules only for the command that needs them;
``common`` holds pool resolution, the call to the daemon or the offline path, and output helpers.
"""

from __future__ import annotations

__all__ = ["admin_cmd", "array_cmd", "backup_cmd", "client_cmd", "common", "drill_cmd", "export_cmd", "group_cmd",
           "main", "media_cmd", "migrate_cmd", "pair_cmd", "pki_cmd", "pool_cmd", "service_cmd", "snapshot_cmd",
           "status_cmd", "volume_cmd"]
