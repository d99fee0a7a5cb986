"""Replication in the daemon: the pairs of this array, their threads, and the pair commands.

One :class:`Replication` per daemon. It loads the pairs, fences the groups this array is the
secondary of (hosts get EROFS), starts a :class:`~vstor.replication.primary.shipper.Shipper` per
primary pair and, with ``--listen``, the TLS endpoint whose connections become
:class:`~vstor.replication.target.Session` s. Commands (pair create, split, resync, takeover,
failback, delete, status) run here, under ``self.lock``, and persist every state change
before they return.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from vstor.clock import Clock, SystemClock
from vstor.errors import AlreadyExists, Busy, NotFound, UsageError
from vstor.faults import NO_FAULTS, Faults
from vstor.replication import transport
from vstor.replication.bitmap import DirtyBitmap
from vstor.replication.folding import consumer_name
from vstor.replication.handshake import probe
from vstor.replication.listener import Listener
from vstor.replication.pairstate import (
    CONSISTENT,
    PRIMARY,
    PSUE,
    SECONDARY,
    SIMPLEX,
    SPLIT_BRAIN,
    SSWS,
    Pair,
    require_role,
)
from vstor.replication.registry import Registry
from vstor.store.catalog.volumes import DEFAULT_GROUP
from vstor.store.store import Store

log = logging.getLogger("vstor.replication")


Dial = Callable[..., transport.Conn]  # dial(pair, faults=, rate=, compress=) -> a connection to its peer


class Replication:
    """The pairs of one array. ``dial`` opens connections to peers (default: mutual TLS from
    ``tls_dir``; memlink.MemNet.dialer in one process); inbound ones go to :meth:`serve`."""

    def __init__(self, store: Store, tls_dir: str | None = None, name: str | None = None,
                 listen: str | None = None, clock: Clock | None = None, faults: Faults = NO_FAULTS,
                 dial: Dial | None = None) -> None:
        self.store, self.tls_dir, self.listen_addr = store, tls_dir, listen
        self.name = name or (_only_identity(tls_dir) if tls_dir else None)
        self.clock, self.faults = clock or SystemClock(), faults
        self.dial: Dial = dial or self._dial_tls
        self.registry = Registry(store.files.sub("meta"))
        self.lock = threading.RLock()
        self.pairs: dict[str, Pair] = self.registry.load_all()
        self.bitmaps: dict[str, dict[int, DirtyBitmap]] = {g: self.registry.load_bitmap(g) for g in self.pairs}
        self.shippers: dict[str, Any] = {}
        self.sessions: dict[str, Any] = {}
        self.listener: Listener | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        with self.lock:
            for pair in self.pairs.values():
                if pair.role == SECONDARY:
                    self.fence(pair)
                else:
                    self.start_shipper(pair)
        if self.listen_addr:
            if not self.tls_dir or not self.name:
                raise UsageError("--listen needs --tls-dir (and --name when the directory holds several "
                                 "arrays' certificates)")
            self.listener = Listener(self.listen_addr, self.tls_dir, self.name, self.serve, self.faults, self.clock)
            self.listener.start()
            log.info("replication endpoint %s listening on %s", self.name, self.listener.address)

    def stop(self) -> None:
        if self.listener:
            self.listener.stop()
        for sh in list(self.shippers.values()):
            sh.stop()
        for sess in list(self.sessions.values()):
            sess.close()

    def serve(self, conn: transport.Conn, first: tuple[int, bytes] | None = None) -> None:
        """Serve one inbound connection (its first frame when already read) until it ends."""
        from vstor.replication.target import Session

        Session(self, conn).run(first)

    def _dial_tls(self, pair: Pair, **kw: Any) -> transport.Conn:
        tls_dir, name = self.check_tls()
        return transport.connect(pair.peer, tls_dir, name, **kw)

    def endpoint(self) -> dict:
        """This array's replication endpoint for ``array status``: ``listen`` is the address only
        while the listener serves; ``listener`` says how it is (serving, or down and why)."""
        described = self.listener.describe() if self.listener else None
        serving = described is not None and described["state"] == "serving"
        return {"name": self.name, "listen": described["address"] if serving else None,  # type: ignore[index]
                "listener": described}

    # -- helpers used by shippers and sessions ----------------------------------------------------
    def save(self, pair: Pair) -> None:
        with self.lock:
            self.registry.save(pair)

    def gid(self, pair: Pair) -> int:
        with self.store.locked():
            return self.store.state.catalog.group(pair.group).id

    def members(self, pair: Pair) -> list[dict]:
        gid = self.gid(pair)
        with self.store.locked():
            return sorted(({"id": v.id, "name": v.name, "size": v.size}
                           for v in self.store.state.table.by_id.values() if v.group == gid), key=lambda m: m["id"])

    def fence(self, pair: Pair) -> None:
        with self.store.locked():
            self.store.fenced[self.gid(pair)] = (
                f"group {pair.group} is the replication secondary of {pair.peer_name}: it is read-only here; "
                f"use 'vstor pair takeover {pair.group}' to make it writable")

    def unfence(self, pair: Pair) -> None:
        with self.store.locked():
            self.store.fenced.pop(self.gid(pair), None)

    def start_shipper(self, pair: Pair) -> None:
        from vstor.replication.primary.shipper import Shipper

        old = self.shippers.get(pair.group)
        if old is not None and old.is_alive():
            old.wake.set()
            return
        sh = Shipper(self, pair.group)
        self.shippers[pair.group] = sh
        sh.start()

    def stop_shipper(self, group: str) -> None:
        sh = self.shippers.pop(group, None)
        if sh is not None:
            sh.stop()

    def register_consumer(self, pair: Pair) -> None:
        """Start the pair's journal consumer at the journal's current end (under the store lock)."""
        name = consumer_name(pair.group)
        with self.store.locked():
            if name in self.store.consumers.positions():
                self.store.consumers.unregister(name)
            self.store.consumers.register(name, self.store.journal.tail())

    def drop_consumer(self, pair: Pair) -> None:
        name = consumer_name(pair.group)
        if name in self.store.consumers.positions():
            self.store.consumers.unregister(name)

    def mark_split_brain(self, pair: Pair, reason: str) -> None:
        with self.lock:
            if pair.state != SPLIT_BRAIN:
                pair.transition("split_brain")
                pair.reason = reason
                self.save(pair)
        log.error("pair %s: SPLIT BRAIN: %s; nothing is discarded: choose the array whose data wins and run "
                  "'vstor pair resync %s' there (or 'vstor pair failback %s' on the taken-over side)",
                  pair.group, reason, pair.group, pair.group)

    def suspend(self, pair: Pair, reason: str) -> None:
        with self.lock:
            if pair.state != PSUE:
                pair.transition("error")
            pair.reason = reason
            self.save(pair)
        log.error("pair %s suspended (PSUE): %s", pair.group, reason)

    def promote(self, pair: Pair, seq: int, event: str) -> None:
        """Make this array the primary at group sequence number ``seq`` (a new generation) through
        ``event``: takeover (planned, PAIR) or force (SSWS)."""
        with self.lock:
            pair.promote(seq, event)  # first: refused without changing anything if not possible
            self.register_consumer(pair)
            self.bitmaps[pair.group] = {}
            self.registry.save_bitmap(pair.group, {})
            pair.consistent = True
            pair.reason = ""
            self.save(pair)
            self.unfence(pair)
            self.start_shipper(pair)
        log.info("pair %s: promoted to primary at seq %d, generation %d (%s)", pair.group, seq,
                 pair.generation, pair.state)

    def check_tls(self) -> tuple[str, str]:
        if not self.tls_dir or not self.name:
            raise UsageError("replication needs TLS: start the array with --tls-dir DIR (made with "
                             "'vstor pki init' and 'vstor pki issue')")
        return self.tls_dir, self.name

    def pair(self, group: str) -> Pair:
        p = self.pairs.get(group)
        if p is None:
            raise NotFound(f"group {group!r} is not paired (see 'vstor pair status')")
        return p

    # -- commands ------------------------------------------------------------------------------
    def create(self, group: str, peer: str, peer_name: str | None, peer_group: str | None, secondary: bool,
               bandwidth: int = 0, compress: str = "none", journal_limit: int = 1 << 30,
               suspend_after: float = 10.0) -> dict:
        transport.parse_address(peer)
        if compress not in ("lz4", "none"):
            raise UsageError(f"invalid --compress {compress!r}: use lz4 or none")
        with self.lock:
            if group in self.pairs:
                p = self.pairs[group]
                raise AlreadyExists(f"group {group} is already paired with {p.peer_name} at {p.peer} "
                                    f"({p.role}, {p.state}); 'vstor pair delete {group}' first")
            if secondary and self.store.state.catalog.find_group(group) is None:
                self.store.event(lambda st: st.catalog.make_group_create(st.table, group, [], self.clock.time()))
            pair = Pair(group, peer, peer_name or transport.parse_address(peer)[0], peer_group or group,
                        SECONDARY if secondary else PRIMARY, bandwidth=bandwidth, compress=compress,
                        journal_limit=journal_limit, suspend_after=suspend_after, created=self.clock.time())
            members = self.members(pair)
            if secondary:
                self.pairs[group] = pair
                self.save(pair)
                self.fence(pair)
                return self.describe(pair)
            if not members:
                raise UsageError(f"group {group} has no volumes; add some with 'vstor group add'")
            # the peer must know us and this group: a clear error now, not a PSUE later (without TLS
            # set up, the dial says so)
            probe(self, pair)
            pair.transition("create")
            with self.store.locked():  # an exact cut: records after the consumer are shipped, the rest copied
                self.register_consumer(pair)
                maps = {}
                for m in members:
                    bm = DirtyBitmap(m["size"])
                    for s, e, _loc in self.store.state.maps[m["id"]].lookup(0, m["size"]):
                        bm.mark(s, e - s)
                    maps[m["id"]] = bm
            self.bitmaps[group] = maps
            self.registry.save_bitmap(group, maps)
            self.pairs[group] = pair
            self.save(pair)
            self.start_shipper(pair)
            return self.describe(pair)

    def describe(self, pair: Pair) -> dict:
        d = pair.as_dict()
        d["dirty_bytes"] = sum(bm.dirty_bytes() for bm in self.bitmaps.get(pair.group, {}).values())
        with self.store.locked():
            g = self.store.state.catalog.find_group(pair.group)
            d["seq"] = self.store.state.group_seq.get(g.id, 0) if g else 0
        runtime = self.shippers.get(pair.group) if pair.role == PRIMARY else self.sessions.get(pair.group)
        d.update(runtime.metrics() if runtime is not None else {"connected": False})
        return d

    def status(self, group: str | None = None) -> list[dict]:
        with self.lock:
            pairs = [self.pair(group)] if group else sorted(self.pairs.values(), key=lambda p: p.group)
            return [self.describe(p) for p in pairs]

    def split(self, group: str, mode: str) -> dict:
        pair = self.pair(group)
        require_role(pair, PRIMARY, "split")
        sh = self.shippers.get(group)
        if sh is None:
            raise Busy(f"pair {group} is {pair.state}; there is nothing to split")
        sh.request("split", mode)
        return self.describe(pair)

    def resync(self, group: str) -> dict:
        pair = self.pair(group)
        with self.lock:
            if pair.state == SPLIT_BRAIN:  # this array's data wins; the peer keeps its own in a snapshot
                pair.victim_peer = True
            else:
                require_role(pair, PRIMARY, "resync")
            pair.transition("resync")  # (the primary's role)
            pair.reason = ""
            self.save(pair)
            self.start_shipper(pair)
        return self.describe(pair)

    def failback(self, group: str) -> dict:
        pair = self.pair(group)
        with self.lock:
            require_role(pair, PRIMARY, "failback")
            if pair.state not in (SSWS, SPLIT_BRAIN):
                raise Busy(f"pair {group} is {pair.state}: failback follows a forced takeover (SSWS or "
                           "SPLIT_BRAIN after the old primary's return)")
            pair.transition("resync")
            pair.victim_peer = True
            pair.swap_after = True
            self.save(pair)
            self.start_shipper(pair)
        return self.describe(pair)

    def takeover(self, group: str, force: bool, timeout: float = 120.0) -> dict:
        pair = self.pair(group)
        require_role(pair, SECONDARY, "takeover")
        if pair.state not in CONSISTENT or not pair.consistent:
            raise Busy(f"pair {group} is {pair.state} and this copy is not consistent; it cannot be promoted "
                       "(roll back to the protective snapshot taken before the resync to use its data)")
        sess = self.sessions.get(group)
        if not force:
            if sess is None:
                raise Busy(f"the primary {pair.peer_name} is not connected; a planned takeover needs it. Use "
                           f"--force to promote this array at its last applied point (seq {self.applied(pair)})")
            sess.request_takeover(timeout)
            return self.describe(pair)
        if sess is not None:
            sess.close()
            sess.join(10.0)
        self.promote(pair, self.applied(pair), "force")
        return self.describe(pair)

    def applied(self, pair: Pair) -> int:
        with self.store.locked():
            return self.store.state.group_seq.get(self.gid(pair), 0)

    def delete(self, group: str) -> dict:
        pair = self.pair(group)
        sh = self.shippers.get(group)
        if sh is not None and sh.is_alive():  # outside the lock: the shipper may be waiting for it
            sh.request("delete", "", timeout=15.0)
        self.stop_shipper(group)
        with self.lock:
            sess = self.sessions.pop(group, None)
            if sess is not None:
                sess.close()
            self.drop_consumer(pair)
            self.unfence(pair)
            self.pairs.pop(group)
            self.bitmaps.pop(group, None)
            self.registry.remove(group)
        return {"group": group, "state": SIMPLEX, "deleted": True}

    def guard(self, group_id: int, action: str) -> None:
        """Refuse membership and size changes of a paired group: both sites must keep the same volumes."""
        with self.lock:
            for p in self.pairs.values():
                g = self.store.state.catalog.find_group(p.group)
                if g is not None and g.id == group_id and group_id != DEFAULT_GROUP:
                    raise Busy(f"group {p.group} is paired with {p.peer_name}: cannot {action} while paired; "
                               f"'vstor pair delete {p.group}' on both arrays first")


def _only_identity(tls_dir: str) -> str | None:
    names = [f[:-4] for f in os.listdir(tls_dir) if f.endswith(".pem") and f != "ca.pem"] \
        if os.path.isdir(tls_dir) else []
    return names[0] if len(names) == 1 else None

