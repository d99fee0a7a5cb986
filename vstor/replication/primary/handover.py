"""Split, drain and demotion on the primary, mixed into the Shipper.

A planned swap fences host writes first (EROFS, checked per record under the store lock),
drains every record to the secondary, gives up the primary role durably, and only then tells
the secondary to promote itself: at no moment are both arrays writable.
"""

from __future__ import annotations

import logging

from vstor.errors import VstorError
from vstor.replication import transport, wire
from vstor.replication.pairstate import Pair
from vstor.replication.primary.parts import ShipperParts

log = logging.getLogger("vstor.replication")


class Stopped(Exception):
    """The shipper ends (stop requested, or this array is no longer the primary)."""


class HandoverMixin(ShipperParts):

    def _split(self, conn: transport.Conn | None, mode: str) -> None:
        pair = self.pair
        if mode == "flush":
            if conn is None:
                raise VstorError(f"the peer {pair.peer_name} is not connected: a flush split cannot drain the "
                                 "journal; use --purge (unsent records go to the dirty bitmap)")
            self._drain(conn, pair, self.mgr.applied(pair))
        with self.mgr.lock:
            pair.transition("split")
            self.mgr.save(pair)
        if conn is not None:
            conn.send_json(wire.CONTROL, {"op": "split"})
        self.fold()

    def _drain(self, conn: transport.Conn, pair: Pair, target: int, timeout: float = 120.0) -> None:
        """Ship until the secondary has acknowledged ``target``."""
        deadline = self.clock.monotonic() + timeout
        self.store.sync()
        gid = self.mgr.gid(pair)
        while self.acked_seq < target:
            if self.clock.monotonic() > deadline:
                raise VstorError(f"pair {self.group}: the journal did not drain within {timeout:.0f}s")
            sent = self._step(conn, gid)
            self._poll(conn, 0 if sent else 0.05)
            self._check_alive(conn)
        self._commit()

    def _demote(self, conn: transport.Conn, pair: Pair) -> None:
        """Planned swap: fence hosts, drain everything to the secondary, hand over the primary role."""
        self.mgr.fence(pair)
        target = self.mgr.applied(pair)
        try:
            self._drain(conn, pair, target)
        except BaseException:
            self.mgr.unfence(pair)
            raise
        with self.mgr.lock:
            pair.transition("demote")  # the secondary, still PAIR
            pair.swap_after = pair.victim_peer = False
            pair.consistent = True
            self.mgr.drop_consumer(pair)
            self.mgr.bitmaps[self.group] = {}
            self.mgr.registry.save_bitmap(self.group, {})
            self.mgr.save(pair)
        conn.send_json(wire.CONTROL, {"op": "demoted", "seq": target, "generation": pair.generation})
        log.info("pair %s: demoted to secondary at seq %d; %s becomes the primary", self.group, target,
                 conn.peer_name)
        raise Stopped
