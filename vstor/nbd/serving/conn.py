"""One NBD client connection: the handshake, then the transmission loop.

The connection's thread reads every request and serves those that need no durability right
there, in arrival order: READ, WRITE, TRIM, WRITE_ZEROES, CACHE, BLOCK_STATUS. Requests are
received through a buffer (wire.py), so one recv brings every header (and small payload) the
client has queued, and their replies are gathered in a :class:`~vstor.nbd.serving.replies.ReplyBatch`
that goes out in one ``sendmsg`` when no complete request is left in the buffer (before the
thread would block), so a client with a queue depth of 16 pays for one TCP send and one
wake-up per batch, not per request. READs are served by a
:class:`~vstor.nbd.serving.reads.ReadServer` (reads.py): answered from the page cache without waiting
when more requests are queued, deferred while the kernel reads what missed (served when this
thread would otherwise wait, or before any request other than a read; no other thread, so TLS
connections do it too), given to read workers on a remote pool, or, when large, streamed in
pieces from a sender thread. Handing every read to a worker, as before, cost a thread switch
and a GIL hand-over each way: 15.1-15.6k IOPS at rand-read QD16 against 24.5-26.3k with
misses deferred (docs/benchmarks-history.md §10, runs N4 and N5).
Requests that must wait for the journal to be durable -- FLUSH, and any command with FUA,
whose data is applied first -- go to a small worker pool after the batch before them went
out, so the connection keeps reading while they wait: their replies come out of order, as
the protocol allows. Over TLS those are served by the connection's thread too (an ssl socket
must not be read and written from two threads at once). A flush covers every write already
applied, answered or not (the store's sync is a group commit over the whole journal, which
also makes CAN_MULTI_CONN safe).
Plain TCP connections serve their batches in turns (turns.py): a connection holds the
server's serving turn while it parses requests and serves reads from memory, and leaves it
before anything that may wait, so that several busy connections do not hand the GIL to each
other at every system call.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vstor.errors import Unavailable, VstorError
from vstor.nbd import proto as P
from vstor.nbd.negotiate import CONTEXT_ID, Negotiation, Session
from vstor.nbd.serving.reads import ReadServer
from vstor.nbd.serving.replies import ReplyBatch
from vstor.nbd.serving.turns import TURN_REQUESTS, ServingTurn
from vstor.nbd.serving.wire import Wire
from vstor.nbd.transmit import allocation_extents, check
from vstor.replication import pki
from vstor.store.allocation import mapped_ranges

log = logging.getLogger("vstor.nbd")

KEEP_BUFFER = 4 << 20  # the largest data buffer a connection keeps between requests
POOL_WORKERS = 8  # per connection: FLUSH/FUA waits
EXPORT_COUNTERS = ("ops", "bytes_read", "bytes_written", "reads_waited")  # per connection and summed per export
PARALLEL = True  # False: serve everything in the connection's thread (FLUSH/FUA too), as over TLS


class Connection:
    def __init__(self, sock: socket.socket, peer: str, host: Any, key: int = 0) -> None:
        self.key = key  # the server's handle on this connection
        self.wire = Wire(sock)
        self.peer, self.host = peer, host
        self.cn: str | None = None
        self.export = ""
        self.session: Session | None = None
        self.ops = self.bytes_read = self.bytes_written = 0
        self.started = self.finished = 0  # requests read, and those whose reply is sent (idle: equal)
        self._done_lock = threading.Lock()  # the durability workers count finished too
        self._pool: ThreadPoolExecutor | None = None
        self.reads: ReadServer | None = None  # once it serves requests
        self._lone = False  # the last wait's receive brought one request (see _one_at_a_time)
        self._buf = bytearray(1 << 20)
        self._view = memoryview(self._buf)
        self._send = self.wire.send
        # The server's serving turn: taken by plain TCP connections only; leaving it is a no-op
        # for a thread that does not hold it, so the code that leaves it need not know which.
        self.turn: ServingTurn = host.turn

    @property
    def raw(self) -> socket.socket:
        """The connection's socket (the server sets its timeout)."""
        return self.wire.raw

    @property
    def tls(self) -> bool:
        return self.wire.tls

    # -- buffers -------------------------------------------------------------------------------------
    def _buffer(self, n: int) -> memoryview:
        """The connection's data buffer (kept up to KEEP_BUFFER bytes; a larger request gets
        its own, freed after it, so idle connections hold little memory)."""
        if n > len(self._buf):
            if n > KEEP_BUFFER:
                return memoryview(bytearray(n))
            self._buf = bytearray(n)
            self._view = memoryview(self._buf)
        return self._view[:n]

    def close(self) -> None:
        self.wire.close()

    # -- the handshake ---------------------------------------------------------------------------------
    def negotiate(self) -> Session | None:
        """Fixed newstyle up to GO (or EXPORT_NAME). None: the client left or was refused."""
        wire = self.wire
        wire.raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wire.send(P.hello())
        flags = P.parse_client_flags(wire.recv(4))
        host = self.host
        neg = Negotiation(host.catalog, host.tls_ctx is not None, host.tls_ctx is not None, flags)
        while True:
            opt, length = P.parse_option_header(wire.recv(P.OPT_HEADER_SIZE))
            if length > P.MAX_OPTION_DATA:
                raise P.ProtocolError(f"option {opt} carries {length} bytes (the limit is {P.MAX_OPTION_DATA})")
            data = wire.recv(length)
            if host.closing.is_set():
                self._send(P.option_reply(opt, P.REP_ERR_SHUTDOWN, b"the array is stopping"))
                return None
            step = neg.option(opt, data)
            if step.action == "go":  # a client from the moment it may send requests, before its ACK goes out
                assert step.export is not None
                self.export = step.export.name
                if not host.admit(self):
                    return None  # reaped or stopping
            if step.replies:
                self._send(*step.replies)
            if step.action == "starttls":
                wire.start_tls(host.tls_ctx)
                self.cn = pki.common_name(wire.sock)
                neg.tls_started(self.cn)
            elif step.action == "go":
                return neg.session(step.export)  # type: ignore[arg-type]
            elif step.action == "abort":
                return None
            elif step.action == "close":
                log.info("nbd: closed the connection from %s: %s", self.peer, step.why)
                return None

    # -- transmission ------------------------------------------------------------------------------------
    def serve(self, session: Session) -> None:
        """Serve requests until DISC, end of file or a protocol error; then wait for the
        requests still with the durability workers."""
        self.session = session
        target = session.export.key
        self.vid, self.sid = target.vid, target.sid  # type: ignore[attr-defined]
        self.store = self.host.store
        self._drops_seen = self.store.drops  # resumes that dropped writes, as last told (FLUSH EIO once)
        self.parallel = not self.tls and PARALLEL
        self.wire.poller = self.host.poller(self._one_at_a_time)
        turn = self.turn
        self.wire.turn = turn
        self.batch = batch = ReplyBatch(self._send, self._replied)
        self.reads = reads = ReadServer(self.store, self.vid, self.sid, structured=session.structured,
                                        export_size=session.export.size, batch=batch, wire=self.wire,
                                        replied=self._replied, error=self._error, buffer=self._buffer,
                                        parallel=self.parallel, name=self.peer, turn=turn)
        wire, request = self.wire, P.REQUEST
        closing, faults = self.host.closing, self.host.faults
        taken = 0  # requests served since the last wait
        try:
            while True:
                req = wire.take(request)
                if req is None:
                    self._lone = taken == 1  # (none yet: the first wait, after the handshake)
                    taken = 0
                    reads.gather()  # nothing complete left to serve: the replies go out before we wait
                    batch.flush()  # (each leaves the turn before it would wait)
                    turn.leave()  # we wait for the client
                    wire.fill(request.size)
                    if self.parallel:
                        turn.take()
                    req = wire.take(request)
                taken += 1
                if not taken % TURN_REQUESTS:
                    turn.yield_turn()  # a long queue: the other connections go first
                magic, flags, cmd, cookie, offset, length = req  # type: ignore[misc]
                if magic != P.REQUEST_MAGIC:
                    raise P.ProtocolError(f"bad request magic {magic:#x}")
                payload = None
                if cmd == P.CMD_WRITE:
                    if length > P.MAX_PAYLOAD:
                        raise P.ProtocolError(f"a write of {length} bytes (the maximum payload is {P.MAX_PAYLOAD})")
                    if wire.buffered() < length:
                        reads.gather()  # the payload is still on its way
                        batch.flush()
                        self.turn.leave()
                    payload = self._buffer(length)
                    wire.recv_into(payload)
                elif cmd == P.CMD_DISC:
                    return
                self.started += 1
                if closing.is_set():
                    self.ops += 1
                    self._error(cookie, P.ESHUTDOWN, "the array is stopping: disconnect")
                    continue
                self.ops += 1  # after the closing check: a request counted here will be served
                err, msg = check(cmd, flags, offset, length, session)
                if err:
                    self._error(cookie, err, msg)
                    continue
                try:
                    if faults.armed("nbd.request"):
                        self.turn.leave()  # a slow step happens outside the turn, as a real one would
                    faults.hit("nbd.request")  # tests: a slow request ("delay") in flight
                    self._run(cmd, flags, cookie, offset, length, payload)
                except VstorError as e:
                    self._error(cookie, P.wire_errno(e.errno), str(e))
        finally:
            self.turn.leave()
            try:
                reads.gather()
                batch.flush()  # the replies to what was served before a DISC, a protocol error or EOF
                reads.drain()
            except (OSError, ssl.SSLError) as e:
                log.info("nbd: replies to %s failed: %s", self.peer, e)
            finally:
                reads.close()
                if self._pool is not None:
                    self._pool.shutdown(wait=True)

    def _run(self, cmd: int, flags: int, cookie: int, offset: int, length: int, payload: memoryview | None) -> None:
        """Serve one request: its reply is added to the batch or left to a durability worker."""
        store, vid, reads = self.store, self.vid, self.reads
        assert reads is not None  # serve() made it
        if cmd == P.CMD_READ:
            self.bytes_read += length
            reads.read(flags, cookie, offset, length)
            return
        self.turn.leave()  # writes, trims and flushes may wait for the journal
        reads.gather()  # anything else runs after the reads queued before it
        if cmd == P.CMD_WRITE:
            store.write(vid, offset, payload)
            self.bytes_written += length
        elif cmd in (P.CMD_TRIM, P.CMD_WRITE_ZEROES):
            if length:
                store.trim(vid, offset, length)  # vstor stores no zeros: zeroing is a trim, and fast
        elif cmd == P.CMD_BLOCK_STATUS:
            end = min(offset + length, self.session.export.size)  # type: ignore[union-attr]
            extents = allocation_extents(offset, end - offset, mapped_ranges(store, vid, offset, end, self.sid),
                                         bool(flags & P.CMDF_REQ_ONE))
            self.batch.add(P.block_status_chunk(cookie, CONTEXT_ID, extents))
            return
        if cmd == P.CMD_FLUSH or flags & P.CMDF_FUA:
            self.batch.flush()  # answered writes go out first (the flush covers them either way)
            if not self.parallel:
                self._durable_reply(cookie)
            else:
                self._submit(self._durable_reply, cookie)
            return
        self.batch.add(P.simple_reply(cookie))

    def _replied(self, n: int) -> None:
        with self._done_lock:
            self.finished += n

    def _durable_reply(self, cookie: int) -> None:
        """FLUSH and FUA: the same store call as fsync through FUSE, then the reply (sent now,
        not batched: from a worker, or over TLS where nothing else is in flight)."""
        try:
            self.store.sync()
            if self._drops_seen != self.store.drops:  # once per connection, as errseq_t
                self._drops_seen = self.store.drops
                raise Unavailable("writes made before a storage outage were dropped when the journal resumed")
        except VstorError as e:
            self._safe(self._error_now, cookie, P.wire_errno(e.errno), str(e))
        else:
            self._safe(self._send, P.simple_reply(cookie))
        finally:
            self._replied(1)

    def _one_at_a_time(self) -> bool:
        """Whether polling for the next request pays: the client sent one request since the
        last wait (it waits for each answer; a client with several in flight sends more while
        this thread sleeps, and they are then served in one batch) and every reply is out."""
        return self._lone and self.idle()

    def idle(self) -> bool:
        """No request between its header and its reply having been sent (the thread waits for
        the next one)."""
        with self._done_lock:
            return self.started == self.finished

    def _safe(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except (OSError, ssl.SSLError) as e:
            log.info("nbd: reply to %s failed: %s", self.peer, e)

    def _error(self, cookie: int, err: int, message: str) -> None:
        """An error reply, into the batch."""
        self.batch.add(self._error_reply(cookie, err, message))

    def _error_now(self, cookie: int, err: int, message: str) -> None:
        self._send(self._error_reply(cookie, err, message))

    def _error_reply(self, cookie: int, err: int, message: str) -> bytes:
        if self.session is not None and self.session.structured:
            return P.error_chunk(cookie, err, message)
        return P.simple_reply(cookie, err)

    def counters(self) -> dict:
        """EXPORT_COUNTERS: requests, bytes, and reads that waited (page-cache misses, remote reads)."""
        return {"ops": self.ops, "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
                "reads_waited": self.reads.reads_waited if self.reads is not None else 0}

    def _submit(self, fn: Any, *args: Any) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(POOL_WORKERS, thread_name_prefix=f"nbd-{self.peer}")
        self._pool.submit(fn, *args)
