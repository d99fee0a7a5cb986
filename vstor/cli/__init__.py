"""The ``vstor`` admin tool.

``main`` builds the parser from the ``*_cmd`` modules (one per command family; those of
volumes and backups in the subpackages ``volumes`` and ``backups``), turns errors into
one line and an exit code, and imports heavy modules only for the command that needs them;
``common`` holds pool resolution, the call to the daemon or the offline path, and output helpers.
"""

from __future__ import annotations

__all__ = ["admin_cmd", "array_cmd", "backups", "common", "main", "migrate_cmd", "pki_cmd", "pool_cmd",
           "service_cmd", "status_cmd", "volumes"]
