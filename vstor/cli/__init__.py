"""The ``vstor`` admin tool."""

from __future__ import annotations
