"""Restore drills (Veeam SureBackup style): restore a policy's latest chain to scratch, check it
in isolation, record and report the outcome.

``runner`` (the ``DrillRunner`` the engine owns: restore, check, clean-up, its own schedule),
``check`` (the isolated network namespace and the timed check), ``scratch`` (attaching and
removing scratch volumes), ``catalog`` (the drill tables of the backup catalog, ``_schema``
their DDL) and ``report`` (the report section, trends and the restore-time forecast).
"""

from __future__ import annotations

__all__ = ["catalog", "check", "report", "runner", "scratch"]
