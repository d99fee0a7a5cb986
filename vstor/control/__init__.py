"""The per-pool daemon, its lock and its control socket."""

from __future__ import annotations
