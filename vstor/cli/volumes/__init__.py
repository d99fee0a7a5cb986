"""The admin tool's commands on volumes and what is made of them.

``volume_cmd`` registers ``vstor volume`` (with ``export_cmd``'s NBD export subcommands);
``group_cmd`` consistency groups, ``snapshot_cmd`` their snapshots, and ``pair_cmd`` their
replication pairs.
"""

from __future__ import annotations

__all__ = ["export_cmd", "group_cmd", "pair_cmd", "snapshot_cmd", "volume_cmd"]
