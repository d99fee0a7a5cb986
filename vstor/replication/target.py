"""The secondary side of a pair: one inbound connection, handled in the listener's thread.

The session authorizes the peer (pairstate.judge on the certificate's common name, plus
the encryption key check), then applies frames in order:

* BATCH records must continue the group's sequence exactly (``seq == applied + 1``);
  records already applied are skipped (a reconnect resends them), a gap is an error;
* the store is synced before each ACK, so an acknowledged record survives a crash here;
* COPY data is written without a sequence number; SYNC_END then sets the group's number
  (a journaled ``seq_set``) to where the records continue. The copy is *not* consistent
  until ``consistent_at`` has been applied, and the state says so;
* before the first copy data lands on a group that holds data (resync, failback, a
  split-brain victim), a protective group snapshot is taken.

Any fault (bad frame, gap, write error) ends the session; a fault of this array (write
error, full pool) is sent to the primary as REFUSE with ``suspend`` so the pair goes PSUE.
"""

from __future__ import annotations

import base64
import logging
import ssl
import threading
from typing import Any

from vstor.errors import VstorError
from vstor.replication import bitmap as bitmaps
from vstor.replication import transport, wire
from vstor.replication.folding import fold
from vstor.replication.handshake import check_hello
from vstor.replication.pairstate import COPY, PAIR, PRIMARY, RESYNC, SIMPLEX, Pair, judge
from vstor.store.catalog import snapshots
from vstor.units import format_size

log = logging.getLogger("vstor.replication")


class Session:
    def __init__(self, mgr: Any, conn: transport.Conn) -> None:
        self.mgr, self.conn, self.store = mgr, conn, mgr.store
        self.pair: Pair | None = None
        self.vmap: dict[int, int] = {}
        self.primary_seq = 0
        self.applied_time = 0.0
        self._takeover: threading.Event | None = None  # set by a planned takeover waiting for the swap
        self._takeover_wanted = False
        self.victim = False
        self._done = threading.Event()

    # -- called from other threads ----------------------------------------------------------
    def close(self) -> None:
        self.conn.close()

    def join(self, timeout: float) -> None:
        self._done.wait(timeout)

    def request_takeover(self, timeout: float) -> None:
        """Ask the primary to drain and hand over; returns once this array is the primary."""
        ev = threading.Event()
        self._takeover, self._takeover_wanted = ev, True
        if not ev.wait(timeout) or self.pair is None or self.pair.role != PRIMARY:
            raise VstorError(f"the planned takeover of {self.pair.group if self.pair else '?'} did not complete "
                             f"within {timeout:.0f}s; see 'vstor pair status', or use --force")

    def metrics(self) -> dict:
        applied = self.mgr.applied(self.pair) if self.pair else 0
        return {"connected": not self.conn.closed, "applied_seq": applied, "primary_seq": self.primary_seq,
                "lag_records": max(0, self.primary_seq - applied), "bytes_received": self.conn.bytes_in,
                "last_applied_time": self.applied_time}

    # -- the session ------------------------------------------------------------------------
    def run(self, first: tuple[int, bytes] | None = None) -> None:
        """Serve the connection; ``first`` is its first frame when the listener has read it."""
        transport.background_thread()
        try:
            self._run(first)
        except _End as e:
            log.info("replication session for %s ended: %s", self.pair.group if self.pair else "?", e)
        except (OSError, ssl.SSLError, ConnectionError, wire.BadFrame) as e:
            log.warning("replication connection from %s ended: %s", self.conn.peer_name, e)
            if isinstance(e, wire.BadFrame) and self.pair is not None:
                self._refuse(f"bad frame: {e}")
                self.mgr.suspend(self.pair, f"bad frame from {self.conn.peer_name}: {e}")
        finally:
            if self.pair is not None and self.mgr.sessions.get(self.pair.group) is self:
                self.mgr.sessions.pop(self.pair.group, None)
            self._done.set()

    def _refuse(self, reason: str, **extra: Any) -> None:
        try:
            self.conn.send_json(wire.REFUSE, {"reason": reason, **extra})
        except (OSError, ssl.SSLError):
            pass

    def _run(self, first: tuple[int, bytes] | None) -> None:
        hello = self._hello(*(first or self.conn.recv()))
        if hello is None:
            return
        local = self._authorize(hello)
        if local is None:
            return
        if local.role == PRIMARY and not hello.get("probe"):
            # Chosen as the victim: stop our own shipper first, outside the lock it may be waiting for.
            self.mgr.stop_shipper(local.group)
        with self.mgr.lock:
            if self._authorize(hello) is not local:  # the pair changed meanwhile
                return
            if hello.get("probe"):
                self.conn.send_json(wire.WELCOME, {"generation": local.generation})
                return
            welcome = self._adopt(local, hello)
            old = self.mgr.sessions.get(local.group)
            if old is not None:
                old.close()
            self.mgr.sessions[local.group] = self
            self.pair = local
        self.conn.send_json(wire.WELCOME, welcome)
        log.info("pair %s: %s connected (generation %d, %s)", local.group, self.conn.peer_name,
                 local.generation, local.state)
        while True:
            ftype, body = self.conn.recv()
            self._frame(local, ftype, body)
            if self._takeover_wanted and local.state == PAIR:
                self.conn.send_json(wire.CONTROL, {"op": "takeover"})
                self._takeover_wanted = False

    def _hello(self, ftype: int, body: bytes) -> dict | None:
        """The peer's HELLO with every field checked; a malformed one is refused and logged: None."""
        try:
            if ftype != wire.HELLO:
                raise wire.BadFrame(f"expected HELLO, got {wire.TYPE_NAMES.get(ftype, ftype)}")
            hello = wire.parse_json(body)
            problem = check_hello(hello)
            if problem:
                raise wire.BadFrame(problem)
        except wire.BadFrame as e:
            log.warning("refused replication from %s: malformed HELLO: %s", self.conn.peer_name, e)
            self._refuse(f"malformed HELLO: {e}")
            return None
        return hello

    def _authorize(self, hello: dict) -> Pair | None:
        """The local pair if the verdict on this HELLO is accept; otherwise refuse (and log) and None."""
        with self.mgr.lock:
            local = self.mgr.pairs.get(str(hello.get("peer_group")))
            verdict = judge(local, self.conn.peer_name, hello)
            if verdict.action == "accept" and hello.get("key_check") != self.store.key_check:
                verdict = type(verdict)("refuse", "the arrays' encryption keys differ (or only one pool is "
                                                  "encrypted): use the same key file at both sites")
            if verdict.action == "accept":
                return local
            log.warning("refused replication from %s for group %r: %s", self.conn.peer_name,
                        hello.get("peer_group"), verdict.reason)
            if verdict.action == "split_brain" and local is not None:
                self.mgr.mark_split_brain(local, verdict.reason)
        self._refuse(verdict.reason, split_brain=verdict.action == "split_brain")
        return None

    def _adopt(self, local: Pair, hello: dict) -> dict:
        """Take the primary's view: victim demotion, generation, volumes. Returns the WELCOME."""
        answer: dict = {}
        if local.role == PRIMARY:  # chosen as the victim (failback or split-brain resolution)
            fold(self.mgr, local)
            self.victim = True
            maps = self.mgr.bitmaps.get(local.group, {})
            answer["bitmap"] = base64.b64encode(bitmaps.encode(maps)).decode()
            answer["names"] = {str(v["id"]): v["name"] for v in self.mgr.members(local)}
            self.mgr.drop_consumer(local)
            local.transition("victim")  # the secondary, RESYNC
            local.consistent = False
            self.mgr.fence(local)
            log.warning("pair %s: this array is the victim; its diverged data will be kept in a snapshot",
                        local.group)
        if int(hello["generation"]) > local.generation:
            local.generation = int(hello["generation"])
            local.history = hello.get("history", local.history)
        if local.state == SIMPLEX:
            local.transition("accept")
            local.consistent, local.synced_seq = False, -1
        elif hello.get("state") in (COPY, RESYNC) and local.state != hello["state"]:
            local.transition("follow_copy" if hello["state"] == COPY else "follow_resync")
            local.consistent, local.synced_seq = False, -1
        self.vmap = self._map_volumes(local, hello.get("volumes", []))
        self.mgr.save(local)
        return answer | {"generation": local.generation, "applied": self.mgr.applied(local), "state": local.state}

    def _map_volumes(self, local: Pair, volumes: list[dict]) -> dict[int, int]:
        st, out = self.store.state, {}
        gid = self.mgr.gid(local)
        for v in volumes:
            name, size = str(v["name"]), int(v["size"])
            vol = st.table.find(name)
            if vol is None:
                self.store.create_volume(name, size)
                self.store.event(lambda s, n=name: s.catalog.make_group_add(s.table, local.group, n))
                vol = st.table.find(name)
            elif vol.group != gid:
                raise wire.BadFrame(f"volume {name} exists here outside group {local.group}")
            elif vol.size != size:
                raise wire.BadFrame(f"volume {name} is {format_size(vol.size)} here and {format_size(size)} "
                                    "at the primary")
            out[int(v["id"])] = vol.id
        return out

    # -- frames -------------------------------------------------------------------------------
    def _frame(self, pair: Pair, ftype: int, body: bytes) -> None:
        try:
            if ftype == wire.BATCH:
                applied = self._apply(pair, wire.unpack_batch(body))
                self._ack(pair, applied)
            elif ftype == wire.COPY:
                vol, off, length, data = wire.unpack_copy(body)
                self.mgr.faults.hit("repl.apply")
                self.store.replicated(self._vid(vol), off, length, data, 0)
            elif ftype == wire.PING:
                msg = wire.parse_json(body)
                self.primary_seq = int(msg.get("seq", 0))
                self._ack(pair, self.mgr.applied(pair))
            elif ftype == wire.SYNC_BEGIN:
                self._sync_begin(pair, wire.parse_json(body))
            elif ftype == wire.SYNC_END:
                self._sync_end(pair, wire.parse_json(body))
            elif ftype == wire.CONTROL:
                self._control(pair, wire.parse_json(body))
            else:
                raise wire.BadFrame(f"{wire.TYPE_NAMES[ftype]} is not allowed from the primary")
        except (VstorError, OSError) as e:
            if isinstance(e, (wire.BadFrame, ConnectionError)):
                raise  # the peer's fault, or the link's: not a failure to apply here
            reason = f"{type(e).__name__}: {e}"
            self._refuse(reason, suspend=True)
            self.mgr.suspend(pair, f"cannot apply: {reason}")
            raise ConnectionError(reason) from None

    def _vid(self, primary_vid: int) -> int:
        try:
            return self.vmap[primary_vid]
        except KeyError:
            raise wire.BadFrame(f"record for volume {primary_vid}, which is not in the pair") from None

    def _apply(self, pair: Pair, records: list[wire.Record]) -> int:
        applied = self.mgr.applied(pair)
        for r in records:
            if r.seq <= applied:
                continue  # already here: resent after a reconnect
            if r.seq != applied + 1:
                raise wire.BadFrame(f"sequence gap: record {r.seq} after {applied}")
            self.mgr.faults.hit("repl.apply")
            self.store.replicated(self._vid(r.volume), r.offset, r.length, r.data, r.seq)
            applied = r.seq
            self.applied_time = r.tstamp_ns / 1e9
        self.store.sync()
        self.primary_seq = max(self.primary_seq, applied)
        if not pair.consistent and pair.state in (COPY, RESYNC) and 0 <= pair.synced_seq <= applied:
            with self.mgr.lock:
                pair.transition("synced")
                pair.consistent = True
                self.mgr.save(pair)
            log.info("pair %s: consistent at seq %d (PAIR)", pair.group, applied)
        return applied

    def _ack(self, pair: Pair, applied: int, **extra: Any) -> None:
        try:
            self.conn.send_json(wire.ACK, {"applied": applied, "applied_time": self.applied_time, **extra})
        except (OSError, ssl.SSLError) as e:
            raise ConnectionError(f"the connection to {self.conn.peer_name} failed: {e}") from None

    def _sync_begin(self, pair: Pair, msg: dict) -> None:
        gid = self.mgr.gid(pair)
        with self.store.locked():
            held = any(self.store.state.maps[v.id].mapped_bytes for v in self.store.state.table.by_id.values()
                       if v.group == gid)
        if held or msg.get("kind") == RESYNC:  # a consistent copy must exist while the resync runs
            kind = "diverged" if self.victim else "before-resync"
            snap = snapshots.create(self.store, pair.group,
                                    f"{kind}-g{pair.generation}-{int(self.mgr.clock.time())}")
            log.info("pair %s: protective snapshot %s before the %s copy", pair.group, snap["name"], msg.get("kind"))
        with self.mgr.lock:
            pair.consistent = False
            pair.synced_seq = -1  # until SYNC_END says where the copy is complete
            if pair.state not in (COPY, RESYNC):
                pair.transition("follow_resync")
            self.mgr.save(pair)

    def _sync_end(self, pair: Pair, msg: dict) -> None:
        base, target = int(msg["base_seq"]), int(msg["consistent_at"])
        gid = self.mgr.gid(pair)
        self.store.sync()
        self.store.event(lambda st: {"op": "seq_set", "group": gid, "seq": base})
        with self.mgr.lock:
            pair.synced_seq = target
            self.mgr.save(pair)
        self._ack(pair, base, sync_end=True)
        self._apply(pair, [])

    def _control(self, pair: Pair, msg: dict) -> None:
        op = msg.get("op")
        if op == "split":
            with self.mgr.lock:
                pair.transition("peer_split")
                self.mgr.save(pair)
        elif op == "delete":
            self.mgr.delete(pair.group)
            raise _End("the primary deleted the pair")
        elif op == "demoted":
            seq = int(msg["seq"])
            if self.mgr.applied(pair) != seq:
                raise wire.BadFrame(f"the primary demoted at seq {seq} but {self.mgr.applied(pair)} is applied here")
            self.mgr.promote(pair, seq, "takeover")
            if self._takeover is not None:
                self._takeover.set()
            raise _End("roles swapped: this array is now the primary")
        else:
            raise wire.BadFrame(f"unknown control operation {op!r}")



class _End(Exception):
    """The session ends normally (roles swapped, pair deleted)."""
