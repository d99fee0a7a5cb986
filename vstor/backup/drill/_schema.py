"""The restore drill tables of the backup catalog (schema version 2; see drill/catalog.py and
docs/formats.md). Private to backup/_catalog_schema.py and drill/catalog.py."""

from __future__ import annotations

__all__ = ["DRILL_SCHEMA", "DRILL_STATUSES"]

DRILL_STATUSES = ("running", "passed", "failed")

DRILL_SCHEMA = """
CREATE TABLE drill_defs (
    policy TEXT PRIMARY KEY, schedule TEXT, check_cmd TEXT, timeout REAL NOT NULL, created REAL NOT NULL,
    last_fire REAL);
CREATE TABLE drills (
    id INTEGER PRIMARY KEY AUTOINCREMENT, policy TEXT NOT NULL, job INTEGER, kind TEXT NOT NULL,
    check_cmd TEXT NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', started REAL NOT NULL,
    ended REAL, bytes INTEGER NOT NULL DEFAULT 0, restore_s REAL, check_s REAL, exit_code INTEGER,
    output TEXT NOT NULL DEFAULT '', scratch TEXT NOT NULL DEFAULT '{}');
CREATE INDEX drills_policy ON drills(policy, id);
"""
