"""What the Shipper's phases use of the Shipper they are mixed into. Declarations only.

The copy phase (copier.py) and the split, drain and demotion (handover.py) are mixins of the
Shipper (shipper.py); this base declares the attributes and methods they reach on it, so that a
type checker sees one contract instead of each mixin repeating it. Nothing here runs.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vstor.replication import transport
    from vstor.replication.pairstate import Pair

__all__ = ["ShipperParts"]


class ShipperParts:
    mgr: Any
    store: Any
    group: str
    clock: Any
    acked_seq: int
    copy_total: int
    copy_done: int
    consistent_at: int
    sync_acked: threading.Event

    if TYPE_CHECKING:  # provided by the Shipper (shipper.py)
        @property
        def pair(self) -> Pair: ...
        def fold(self) -> None: ...
        def _send(self, conn: transport.Conn, ftype: int, payload: bytes) -> None: ...
        def _poll(self, conn: transport.Conn, timeout: float) -> None: ...
        def _check_alive(self, conn: transport.Conn) -> None: ...
        def _serve_requests(self, conn: transport.Conn | None) -> None: ...
        def _step(self, conn: transport.Conn, gid: int) -> bool: ...
        def _commit(self) -> None: ...
