"""Asynchronous replication of consistency groups between two arrays over mutual TLS.

A pair's primary runs one Shipper thread (the subpackage ``primary``: ``shipper``, with its
``copier`` and ``handover`` phases; ``parts`` declares what they use of it) that copies,
ships journal records in order and folds what it cannot ship into dirty bitmaps
(``folding``, ``bitmap``); the
secondary's ``target`` applies them, in the ``listener``'s thread. ``wire`` (frames),
``handshake`` and ``pairstate`` (the state machine) are pure; ``transport`` and ``pki`` are the
TLS adapters; ``manager`` and ``registry`` keep a daemon's pairs. ``memlink`` is an in-memory
network that runs both sides in one process (the tests' transport).
"""

from __future__ import annotations

__all__ = ["bitmap", "folding", "handshake", "listener", "manager", "memlink", "pairstate", "pki", "primary",
           "registry", "target", "transport", "wire"]
