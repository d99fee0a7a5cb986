"""The primary side of a pair: one thread that connects, copies, ships and folds.

Ship loop: read the group's durable records after an in-memory cursor (journal order is
group sequence order), send them in BATCH frames, and move the pair's journal consumer only
to positions whose records the secondary has acknowledged as durable. So after any crash or
disconnect, shipping resumes at the consumer, and the secondary skips what it already has.

Copy (COPY, RESYNC): first fold the journal into the dirty bitmap, then send the current
data of every dirty range, then SYNC_END with the sequence number the records that follow
start from. The bitmap is cleared only once the secondary has acknowledged SYNC_END.

Suspended (PSUS, PSUE, SSWS, SPLIT_BRAIN): fold records into the bitmap, saved durably
before the consumer moves, so the journal is freed and no acknowledged write is forgotten.
The connection is single-threaded: one thread sends and polls for the secondary's frames.
"""

from __future__ import annotations

import collections
import logging
import ssl
import threading
from typing import Any

from vstor.errors import Busy, VstorError
from vstor.replication import transport, wire
from vstor.replication.folding import consumer_name, fold
from vstor.replication.handshake import PeerRefused, hello, open_conn
from vstor.replication.pairstate import COPY, PAIR, PFUL, PRIMARY, RESYNC, SHIPPING, Pair
from vstor.replication.primary.copier import CopyMixin
from vstor.replication.primary.handover import HandoverMixin, Stopped
from vstor.store.journal.consumers import read_group

log = logging.getLogger("vstor.replication")

BATCH_BYTES = 4 << 20
WINDOW_BYTES = 64 << 20  # unacknowledged data in flight
PING_EVERY = 1.0
COMMIT_EVERY = 0.5
SYNC_EVERY = 0.05  # seconds between syncs the shipper asks for when records wait to become durable
PFUL_AT, PFUL_CLEAR = 0.8, 0.6


class Shipper(CopyMixin, HandoverMixin, threading.Thread):
    def __init__(self, mgr: Any, group: str) -> None:
        super().__init__(name=f"repl-out-{group}", daemon=True)
        self.mgr, self.group, self.store = mgr, group, mgr.store
        self.clock = mgr.clock
        self.wake = threading.Event()
        self._stop_ev = threading.Event()
        self.conn: transport.Conn | None = None
        self.backoff = transport.Backoff(cap=10.0)
        # (last seq, journal position after it, data bytes, tstamp of its first record) per batch in flight
        self.pending: collections.deque[tuple[int, tuple[int, int], int, int]] = collections.deque()
        self.cursor: tuple[int, int] = (0, 0)
        self.consistent_at = 1 << 62  # COPY/RESYNC: PAIR once the secondary has applied this seq
        self._committable: tuple[int, int] | None = None
        self.last_rx = 0.0
        self._last_sync = 0.0
        self.last_ack_time = mgr.clock.time()
        self.acked_seq = self.sent_seq = 0
        self.acked_time_ns = 0
        self.sync_acked = threading.Event()
        self.copy_total = self.copy_done = 0
        self.disconnected_since: float | None = None
        self.last_error = ""
        self.requests: collections.deque[tuple[str, str, threading.Event, list]] = collections.deque()
        self._rate: collections.deque[tuple[float, int]] = collections.deque(maxlen=512)
        self.bytes_sent = 0

    # -- control from other threads ------------------------------------------------------------
    def stop(self) -> None:
        self._stop_ev.set()
        self.wake.set()
        if self.conn is not None:
            self.conn.close()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(15)

    def request(self, op: str, arg: str, timeout: float = 120.0) -> None:
        """Run ``op`` (split, delete) in the shipper's thread and wait for it; re-raises its error."""
        done, box = threading.Event(), []  # type: ignore[var-annotated]
        self.requests.append((op, arg, done, box))
        self.wake.set()
        if not done.wait(timeout):
            raise VstorError(f"pair {self.group}: '{op}' did not finish within {timeout:.0f}s")
        if box and isinstance(box[0], BaseException):
            raise box[0]

    @property
    def pair(self) -> Pair:
        return self.mgr.pairs[self.group]

    def metrics(self) -> dict:
        pair = self.pair
        seq = self.mgr.applied(pair) if self.group in self.mgr.pairs else 0
        lag_s = self._lag_seconds(seq)
        now = self.clock.monotonic()
        recent = [(t, b) for t, b in tuple(self._rate) if t >= now - 5.0]  # bytes/s over the last 5 s
        rate = (self.bytes_sent - recent[0][1]) / max(now - recent[0][0], 0.5) if recent else 0.0
        return {"connected": self.conn is not None and not self.conn.closed, "acked_seq": self.acked_seq,
                "lag_records": max(0, seq - self.acked_seq), "lag_seconds": round(lag_s, 3),
                "lag_bytes": self._unacked_bytes(), "journal_fill_pct": round(100 * self._fill(), 1),
                "throughput": round(rate), "bytes_sent": self.bytes_sent, "last_error": self.last_error,
                "copy": {"done": self.copy_done, "total": self.copy_total}}

    # -- the thread ----------------------------------------------------------------------------------
    def run(self) -> None:
        transport.background_thread()
        try:
            self._loop()
        except Stopped:  # also from a backoff wait inside the error handlers below
            return

    def _loop(self) -> None:
        while not self._stop_ev.is_set():
            pair = self.mgr.pairs.get(self.group)
            if pair is None or pair.role != PRIMARY:
                return
            try:
                self._serve_requests(None)
                if pair.state in SHIPPING:
                    self._session(pair)
                    self._hang_up()  # split or deleted: the secondary's session ends now, not at its timeout
                else:
                    self.fold()
                    self._idle(1.0)
            except Stopped:
                return
            except PeerRefused as e:
                self._lost(e)
                if self.mgr.pairs.get(self.group) is pair and pair.state in SHIPPING:
                    self.mgr.suspend(pair, f"refused by {pair.peer_name}: {e}")
            except (OSError, ssl.SSLError, ConnectionError, wire.BadFrame, VstorError) as e:
                self._lost(e)
                self._maybe_suspend(pair)
                if pair.state in SHIPPING:
                    self._idle(self.backoff.next())
            except Exception as e:  # keep the thread alive; the pair reports the error
                log.exception("pair %s: shipper error", self.group)
                self._lost(e)
                self._idle(self.backoff.next())

    def _idle(self, seconds: float) -> None:
        self.clock.wait(self.wake, seconds)
        self.wake.clear()
        if self._stop_ev.is_set():
            raise Stopped

    def _hang_up(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _lost(self, e: BaseException) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.last_error = str(e) or type(e).__name__
        if self.disconnected_since is None:
            self.disconnected_since = self.clock.monotonic()
            log.warning("pair %s: connection to %s lost: %s", self.group, self.pair.peer_name, self.last_error)

    def _maybe_suspend(self, pair: Pair) -> None:
        if pair.state in (PAIR, PFUL):
            try:
                self._pressure(pair)  # records queue while the peer is away: the journal may overflow
            except ConnectionError:
                return
        if pair.state in (PAIR, PFUL, COPY, RESYNC) and self.disconnected_since is not None:
            down = self.clock.monotonic() - self.disconnected_since
            if down >= pair.suspend_after:
                self.mgr.suspend(pair, f"peer unreachable for {down:.0f}s: {self.last_error}")

    # -- one connection --------------------------------------------------------------------------------
    def _session(self, pair: Pair) -> None:
        self.conn = conn = open_conn(self.mgr, pair)
        conn.send_json(wire.HELLO, hello(self.mgr, pair))
        ftype, body = conn.recv()
        answer = wire.parse_json(body)
        if ftype == wire.REFUSE:
            if answer.get("split_brain"):
                self.mgr.mark_split_brain(pair, answer.get("reason", ""))
                raise Stopped if self._stop_ev.is_set() else OSError(f"split brain: {answer.get('reason')}")
            raise PeerRefused(answer.get("reason", "no reason given"))
        if ftype != wire.WELCOME:
            raise wire.BadFrame(f"expected WELCOME, got {wire.TYPE_NAMES[ftype]}")
        log.info("pair %s: connected to %s (%s, generation %d)", self.group, conn.peer_name, pair.state,
                 pair.generation)
        self.backoff.reset()
        self.disconnected_since = None
        self.last_error = ""
        self.last_rx = self.clock.monotonic()
        self.acked_seq = max(self.acked_seq, int(answer.get("applied", 0)))
        if pair.state in (COPY, RESYNC):
            self._sync(conn, pair, answer)
        self._ship(conn, pair)

    def _ship(self, conn: transport.Conn, pair: Pair) -> None:
        gid = self.mgr.gid(pair)
        self.cursor = self.store.consumers.position(consumer_name(self.group))
        self.pending.clear()
        self.sent_seq = self.acked_seq
        last_ping = last_commit = self.clock.monotonic()
        while True:
            if self._stop_ev.is_set():
                raise Stopped
            self._serve_requests(conn)
            if pair.state not in SHIPPING or self.mgr.pairs.get(self.group) is not pair:
                return
            self._pressure(pair)
            if pair.swap_after and pair.state == PAIR:
                self._demote(conn, pair)
            sent = self._step(conn, gid)
            now = self.clock.monotonic()
            if not sent and now - last_ping >= PING_EVERY:
                conn.send_json(wire.PING, {"seq": self.mgr.applied(pair), "state": pair.state,
                                           "time": self.clock.time()})
                last_ping = now
            self._poll(conn, 0 if sent else 0.01)
            self._check_alive(conn)
            if now - last_commit >= COMMIT_EVERY:
                self._commit()
                last_commit = now
            if pair.state in (COPY, RESYNC) and self.acked_seq >= self.consistent_at:
                with self.mgr.lock:
                    pair.transition("synced")
                    self.mgr.save(pair)
                log.info("pair %s: copy complete and caught up at seq %d: PAIR", self.group, self.acked_seq)

    def _step(self, conn: transport.Conn, gid: int) -> bool:
        """Send the next batch of durable records, if any and if the window allows; True if sent."""
        if self._unacked_bytes() >= WINDOW_BYTES:
            return False
        if self.store.journal.durable_position() <= self.cursor:
            # Records are shipped only once durable (a crash must not undo what the secondary has).
            # Hosts that do not fsync would leave them waiting for the 1 s maintenance sync: sync
            # here instead, at most every SYNC_EVERY, so the lag stays well under a second.
            now = self.clock.monotonic()
            if self.store.journal.tail() > self.cursor and now - self._last_sync >= SYNC_EVERY:
                self._last_sync = now
                self.store.sync()
            return False
        entries, cursor = read_group(self.store, self.cursor, gid, BATCH_BYTES)
        if entries:
            recs = [wire.Record(e.seq, e.volume, e.offset, e.length, e.data if e.kind == "write" else None,
                                e.tstamp) for e in entries]
            self._send(conn, wire.BATCH, wire.pack_batch(recs))
            self.sent_seq = entries[-1].seq
            nbytes = sum(e.length for e in entries if e.kind == "write")
            self.pending.append((self.sent_seq, cursor, nbytes, entries[0].tstamp))
        elif cursor > self.cursor:  # only other groups' records: free them once what precedes is acked
            self.pending.append((self.sent_seq, cursor, 0, 0))
        self.cursor = cursor
        return bool(entries)

    def _send(self, conn: transport.Conn, ftype: int, payload: bytes) -> None:
        before = self.bytes_sent
        self.bytes_sent += conn.send(ftype, payload)
        now = self.clock.monotonic()
        if not self._rate or now - self._rate[-1][0] >= 0.05:
            self._rate.append((now, before))

    def _poll(self, conn: transport.Conn, timeout: float) -> None:
        """Read every frame the secondary has sent (waiting up to ``timeout`` for the first)."""
        while conn.readable(timeout):
            timeout = 0
            ftype, body = conn.recv()
            self.last_rx = self.clock.monotonic()
            msg = wire.parse_json(body)
            if ftype == wire.ACK:
                self._on_ack(msg)
            elif ftype == wire.CONTROL and msg.get("op") == "takeover":
                self.requests.append(("takeover", "", threading.Event(), []))
            elif ftype == wire.REFUSE:
                reason = msg.get("reason", "")
                if msg.get("suspend"):
                    self.mgr.suspend(self.pair, f"the secondary stopped applying: {reason}")
                    raise ConnectionError(reason)
                raise PeerRefused(reason)
            else:
                raise wire.BadFrame(f"{wire.TYPE_NAMES[ftype]} is not allowed from the secondary")

    def _on_ack(self, msg: dict) -> None:
        applied = int(msg.get("applied", 0))
        if applied > self.acked_seq:
            self.acked_seq = applied
            self.acked_time_ns = int(msg.get("applied_time", 0))
        if msg.get("sync_end"):
            self.sync_acked.set()
        while self.pending and self.pending[0][0] <= self.acked_seq:
            self._committable = self.pending.popleft()[1]
        self.last_ack_time = self.clock.time()

    def _check_alive(self, conn: transport.Conn) -> None:
        if self.clock.monotonic() - self.last_rx > transport.TIMEOUT:
            raise ConnectionError(f"no answer from {conn.peer_name} for {transport.TIMEOUT:.0f}s")

    def _commit(self) -> None:
        pos = self._committable
        if pos is not None:
            self.store.consumers.commit(consumer_name(self.group), pos)
            self._committable = None

    def _unacked_bytes(self) -> int:
        return sum(p[2] for p in tuple(self.pending))  # tuple(): one step under the GIL (status thread)

    def _lag_seconds(self, seq: int) -> float:
        """Age of the oldest record the secondary has not acknowledged (0 when it has them all)."""
        if self.acked_seq >= seq:
            return 0.0
        now = self.clock.time()
        stamps = [p[3] for p in tuple(self.pending) if p[3]]
        return max(0.0, now - (stamps[0] / 1e9 if stamps else self.last_ack_time))

    def _fill(self) -> float:
        """Share of the pair's journal allowance held by records not yet acknowledged."""
        name = consumer_name(self.group)
        if name not in self.store.consumers.positions() or self.group not in self.mgr.pairs:
            return 0.0
        segno, pos = self.store.consumers.position(name)
        tail_segno, tail_pos = self.store.journal.tail()
        held = sum(self.store.journal.segment_bytes(s) for s in self.store.journal.segments()
                   if segno <= s < tail_segno) - pos + tail_pos
        return max(0, held) / max(1, self.pair.journal_limit)

    def _pressure(self, pair: Pair) -> None:
        fill = self._fill()
        if fill >= 1.0:
            self.mgr.suspend(pair, f"journal overflow: {pair.journal_limit} bytes held for the peer; unsent "
                                   "records are folded into the dirty bitmap")
            raise ConnectionError("journal overflow")
        with self.mgr.lock:
            if fill >= PFUL_AT and pair.state == PAIR:
                pair.transition("full")
                self.mgr.save(pair)
                log.warning("pair %s: journal %.0f%% full (PFUL)", self.group, fill * 100)
            elif fill < PFUL_CLEAR and pair.state == PFUL:
                pair.transition("relieved")
                self.mgr.save(pair)

    # -- folding, requests, demotion ------------------------------------------------------------------
    def fold(self) -> None:
        fold(self.mgr, self.pair)
        self.pending.clear()

    def _serve_requests(self, conn: transport.Conn | None) -> None:
        while self.requests:
            op, arg, done, box = self.requests.popleft()
            try:
                if op == "split":
                    self._split(conn, arg)
                elif op == "delete" and conn is not None:
                    conn.send_json(wire.CONTROL, {"op": "delete"})
                elif op == "takeover" and conn is not None:
                    self._demote(conn, self.pair)
            except BaseException as e:  # noqa: BLE001 - handed to the waiting command
                if isinstance(e, VstorError):
                    box.append(e)
                    continue
                if not isinstance(e, Stopped):
                    box.append(Busy(f"pair {self.group}: the connection to {self.pair.peer_name} failed during "
                                    f"'{op}' ({e})" + ("; use --purge to split at once" if op == "split" else "")))
                raise
            finally:
                done.set()
