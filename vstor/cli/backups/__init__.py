"""The admin tool's backup commands: jobs, drills, media and backup clients.

``backup_cmd`` registers ``vstor backup``, ``vstor audit`` and ``vstor key``; ``drill_cmd`` the
``backup drill`` subcommands; ``media_cmd`` ``vstor library`` and ``vstor media``;
``client_cmd`` ``vstor client``, on the array and on a client host.
"""

from __future__ import annotations

__all__ = ["backup_cmd", "client_cmd", "drill_cmd", "media_cmd"]
