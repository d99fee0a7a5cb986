"""The FUSE export: a thin mfusepy adapter over the Store."""

from __future__ import annotations
