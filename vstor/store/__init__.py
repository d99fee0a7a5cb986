"""The storage engine: a log-structured journal that is also the data store.

Public entry point: :class:`vstor.store.store.Store`.
"""

from __future__ import annotations
