"""One NBD client connection: the handshake, then the transmission loop.

The connection's thread reads every request and serves those that need no durability right
there, in arrival order: READ, WRITE, TRIM, WRITE_ZEROES, CACHE, BLOCK_STATUS. Requests are
received through a buffer, so one recv brings every header (and small payload) the client has
queued, and their replies are gathered in a :class:`~vstor.nbd.replies.ReplyBatch` that goes
out in one ``sendmsg`` when no complete request is left in the buffer (before the thread would
block), so a client with a queue depth of 16 pays for one TCP send and one wake-up per batch,
not per request. A read with more requests queued behind it (up to INLINE_READ_MAX; WORKER_READ_MAX remote) is tried
without waiting (``Store.read(nowait=True)``) and answered at once when the header cache and
the page cache hold what it needs. One that misses is deferred: the kernel was asked to read
it (WILLNEED), so the misses of one receive batch reach the disk side by side, and they are
served when the thread would otherwise wait, or before any request other than a read. That
needs no other thread, so TLS connections do it too. Only on a remote pool (RADOS: no page
cache to ask) do queued reads go to the connection's read workers (vstor/nbd/readers.py) to
overlap their round trips, and over TLS not even there. Handing every read to a worker,
as before, cost a thread switch and a GIL hand-over each way: 15.1-15.6k IOPS at rand-read
QD16 against 24.5-26.3k with misses deferred (docs/benchmarks.md §10, runs N4 and N5). A lone read up to
INLINE_READ_MAX gets bytes of its own (its reply waits in the batch). A larger one on a local
pool is a stream the kernel reads ahead of, never tried without waiting; with structured
replies it goes out in pieces from the connection's sender thread while the next piece is
read (vstor/nbd/sender.py). Otherwise it is read into the connection's reusable buffer and
sent at once.
Requests that must wait for the journal to be durable -- FLUSH, and any command with FUA,
whose data is applied first -- go to a small worker pool after the batch before them went
out, so the connection keeps reading while they wait: their replies come out of order, as
the protocol allows. Over TLS those are served by the connection's thread too (an ssl socket
must not be read and written from two threads at once). A flush covers every write already
applied, answered or not (the store's sync is a group commit over the whole journal, which
also makes CAN_MULTI_CONN safe).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vstor.errors import Unavailable, VstorError, WouldBlock
from vstor.nbd import proto as P
from vstor.nbd.ahead import StreamAhead
from vstor.nbd.negotiate import CONTEXT_ID, Negotiation, Session
from vstor.nbd.readers import ReadWorkers
from vstor.nbd.replies import ReplyBatch
from vstor.nbd.sender import ReplySender
from vstor.nbd.transmit import allocation_extents, check
from vstor.replication import pki
from vstor.store.allocation import mapped_ranges

log = logging.getLogger("vstor.nbd")

RBUF = 256 << 10  # receive buffer: request headers (and small payloads) come in batches
KEEP_BUFFER = 4 << 20  # the largest data buffer a connection keeps between requests
INLINE_READ_MAX = 128 << 10  # reads up to this size get their own bytes and wait in the reply batch
POOL_WORKERS = 8  # per connection: FLUSH/FUA waits
READ_WORKERS = 8  # per connection: small reads queued behind another overlap their disk reads
WORKER_READ_MAX = 1 << 20  # remote pools: larger reads are served by the connection's thread (bounds workers' bytes)
READ_QUEUE_MAX, READ_QUEUE_BYTES = 64, 8 << 20  # reads with the workers before their replies are gathered
EXPORT_COUNTERS = ("ops", "bytes_read", "bytes_written", "reads_waited")  # per connection and summed per export
PARALLEL = True  # False: serve everything in the connection's thread (FLUSH/FUA too), as over TLS


class Disconnected(Exception):
    """The client closed the connection (or the server shut it down)."""


class Connection:
    def __init__(self, sock: socket.socket, peer: str, host: Any, key: int = 0) -> None:
        self.key = key  # the server's handle on this connection
        self.raw = self.sock = sock
        self.peer, self.host = peer, host
        self.tls = False
        self.cn: str | None = None
        self.export = ""
        self.session: Session | None = None
        self.ops = self.bytes_read = self.bytes_written = 0
        self.reads_waited = 0  # queued reads the page cache missed (deferred) or that went to the read workers
        self.started = self.finished = 0  # requests read, and those whose reply is sent (idle: equal)
        self._done_lock = threading.Lock()  # the durability workers count finished too
        self._send_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._readers: ReadWorkers | None = None
        self._readers_bytes = 0  # bytes of the reads with the workers
        self._deferred: list[tuple[int, int, int]] = []  # reads whose disk reads the kernel is making
        self._sender: ReplySender | None = None  # large reads, in pieces (local pools, plain TCP)
        self._ahead = StreamAhead()  # large reads in sequence: the volume's next MiBs asked for
        self._buf = bytearray(1 << 20)
        self._rbuf = bytearray(RBUF)  # received, not yet parsed: [_rpos, _rend)
        self._rmv = memoryview(self._rbuf)
        self._rpos = self._rend = 0
        self._view = memoryview(self._buf)

    # -- socket helpers ------------------------------------------------------------------------------
    def _fill(self, need: int) -> None:
        """Have at least ``need`` (<= RBUF) bytes in the receive buffer: one recv usually brings
        several queued request headers at once."""
        if self._rend - self._rpos >= need:
            return
        if self._rpos:  # move the partial rest to the front
            n = self._rend - self._rpos
            self._rmv[:n] = self._rmv[self._rpos : self._rend]
            self._rpos, self._rend = 0, n
        while self._rend < need:
            k = self.sock.recv_into(self._rmv[self._rend :])
            if not k:
                raise Disconnected("the client closed the connection")
            self._rend += k

    def _recv_into(self, view: memoryview) -> None:
        """Exactly len(view) bytes: what is buffered first, the rest straight from the socket."""
        n, got = len(view), min(len(view), self._rend - self._rpos)
        if got:
            view[:got] = self._rmv[self._rpos : self._rpos + got]
            self._rpos += got
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if not k:
                raise Disconnected("the client closed the connection")
            got += k

    def _recv(self, n: int) -> bytes:
        buf = bytearray(n)
        if n:
            self._recv_into(memoryview(buf))
        return bytes(buf)

    def _send(self, *parts: bytes | memoryview) -> None:
        with self._send_lock:
            if self.tls:
                self.sock.sendall(b"".join(parts) if len(parts) > 1 else parts[0])
                return
            bufs = list(parts)
            total = sum(len(b) for b in bufs)
            while total:
                sent = self.sock.sendmsg(bufs)
                total -= sent
                while sent and bufs:  # drop what went out, keep the rest of a partly sent buffer
                    if sent >= len(bufs[0]):
                        sent -= len(bufs.pop(0))
                    else:
                        bufs[0] = memoryview(bufs[0])[sent:]
                        sent = 0

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
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.raw, socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(OSError):
            self.raw.close()

    # -- the handshake ---------------------------------------------------------------------------------
    def negotiate(self) -> Session | None:
        """Fixed newstyle up to GO (or EXPORT_NAME). None: the client left or was refused."""
        self.raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send(P.hello())
        flags = P.parse_client_flags(self._recv(4))
        host = self.host
        neg = Negotiation(host.catalog, host.tls_ctx is not None, host.tls_ctx is not None, flags)
        while True:
            opt, length = P.parse_option_header(self._recv(P.OPT_HEADER_SIZE))
            if length > P.MAX_OPTION_DATA:
                raise P.ProtocolError(f"option {opt} carries {length} bytes (the limit is {P.MAX_OPTION_DATA})")
            data = self._recv(length)
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
                self._rpos = self._rend = 0  # plain bytes sent ahead of the TLS handshake are dropped, never obeyed
                self.sock = self.raw = host.tls_ctx.wrap_socket(self.raw, server_side=True)  # takes over the fd
                self.tls, self.cn = True, pki.common_name(self.sock)  # type: ignore[arg-type]
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
        # Large reads go out in pieces while the next is read: needs structured replies, a
        # socket two threads may use (not TLS) and a page cache (a local pool: a remote one
        # overlaps its round trips in the read workers instead).
        self.local = self.store.journal.local_files
        self.streaming = self.parallel and session.structured and self.local
        self.batch = batch = ReplyBatch(self._send, self._replied)
        size, rbuf = P.REQUEST.size, self._rbuf
        unpack = P.REQUEST.unpack_from
        closing, faults = self.host.closing, self.host.faults
        try:
            while True:
                if self._rend - self._rpos < size:
                    self._gather()  # nothing complete left to serve: the replies go out before we wait
                    batch.flush()
                    self._fill(size)
                magic, flags, cmd, cookie, offset, length = unpack(rbuf, self._rpos)
                self._rpos += size
                if magic != P.REQUEST_MAGIC:
                    raise P.ProtocolError(f"bad request magic {magic:#x}")
                payload = None
                if cmd == P.CMD_WRITE:
                    if length > P.MAX_PAYLOAD:
                        raise P.ProtocolError(f"a write of {length} bytes (the maximum payload is {P.MAX_PAYLOAD})")
                    if self._rend - self._rpos < length:
                        self._gather()  # the payload is still on its way
                        batch.flush()
                    payload = self._buffer(length)
                    self._recv_into(payload)
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
                    faults.hit("nbd.request")  # tests: a slow request ("delay") in flight
                    self._run(cmd, flags, cookie, offset, length, payload)
                except VstorError as e:
                    self._error(cookie, P.wire_errno(e.errno), str(e))
        finally:
            try:
                self._gather()
                batch.flush()  # the replies to what was served before a DISC, a protocol error or EOF
                if self._sender is not None:
                    self._sender.drain()
            except (OSError, ssl.SSLError) as e:
                log.info("nbd: replies to %s failed: %s", self.peer, e)
            finally:
                if self._sender is not None:
                    self._sender.close()
                if self._readers is not None:
                    self._readers.close()
                if self._pool is not None:
                    self._pool.shutdown(wait=True)

    def _run(self, cmd: int, flags: int, cookie: int, offset: int, length: int, payload: memoryview | None) -> None:
        """Serve one request: its reply is added to the batch or left to a durability worker."""
        store, vid = self.store, self.vid
        if cmd == P.CMD_READ:
            self.bytes_read += length
            self._read(flags, cookie, offset, length)
            return
        self._gather()  # anything else runs after the reads queued before it
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

    def _read(self, flags: int, cookie: int, offset: int, length: int) -> None:
        """A READ: tried without waiting (queued behind others), into new bytes that wait in
        the batch (small), or after the batch before it: in pieces or whole (large)."""
        store, vid = self.store, self.vid
        stream = length > INLINE_READ_MAX and self.local  # local segment files: the kernel reads ahead of it
        if not stream and length <= WORKER_READ_MAX and self._rend - self._rpos >= P.REQUEST.size and \
                self._queued_read(cookie, offset, length):
            return
        if length <= INLINE_READ_MAX:  # new bytes of its own: its reply can wait in the batch
            self._reply_data(cookie, offset, length, store.read(vid, offset, length, sid=self.sid))
            return
        self._gather()
        self.batch.flush()
        if stream and self.streaming and not flags & P.CMDF_DF:
            self._stream_read(cookie, offset, length)
        else:
            self._read_whole(cookie, offset, length)
        ahead = self._ahead.next_range(offset, length, self.session.export.size) if stream else None  # type: ignore[union-attr]
        if ahead is not None:  # once the reply is on its way: not in the client's wait
            store.prefetch(vid, *ahead, sid=self.sid)

    def _read_whole(self, cookie: int, offset: int, length: int) -> None:
        """A large read into the connection's buffer, sent at once (after the batch before it)."""
        view = self._buffer(length)
        self.store.read_into(self.vid, offset, view, sid=self.sid)
        self._reply_data(cookie, offset, length, view)
        self.batch.flush()

    def _stream_read(self, cookie: int, offset: int, length: int) -> None:
        """A large read in pieces, each sent by the sender thread while the next is read."""
        if self._sender is None:
            self._sender = ReplySender(self._send, self._replied, f"nbd-send-{self.peer}")
        self._sender.stream(cookie, offset, length, self._read_piece)

    def _read_piece(self, offset: int, view: memoryview) -> None:
        self.store.read_into(self.vid, offset, view, sid=self.sid)

    def _queued_read(self, cookie: int, offset: int, length: int) -> bool:
        """A read with more requests queued behind it: answered now if memory holds it,
        deferred if the kernel is reading it, or given to the read workers (a remote pool).
        False: to be read in place, waiting (a remote pool over TLS: no workers)."""
        try:
            data = self.store.read(self.vid, offset, length, sid=self.sid, nowait=True)
        except WouldBlock as e:
            self.reads_waited += 1
            if e.started:  # served with the batch's other misses, when this thread would wait
                self._deferred.append((cookie, offset, length))
                if len(self._deferred) >= READ_QUEUE_MAX:
                    self._gather()
                return True
            if not self.parallel:
                return False
            if self._readers is None:
                self._readers = ReadWorkers(self._read_bytes, READ_WORKERS, f"nbd-{self.peer}")
            elif self._readers.pending >= READ_QUEUE_MAX or self._readers_bytes + length > READ_QUEUE_BYTES:
                self._gather()  # bounds the memory a client's queued reads can hold
            self._readers_bytes += length
            self._readers.submit(cookie, offset, length)
            return True
        self._reply_data(cookie, offset, length, data)
        return True

    def _reply_data(self, cookie: int, offset: int, length: int, data: Any) -> None:
        if self.session.structured:  # type: ignore[union-attr]
            self.batch.add(P.offset_data_header(cookie, offset, length, True), data)
        else:
            self.batch.add(P.simple_reply(cookie), data)

    def _read_bytes(self, offset: int, length: int) -> bytes:
        return self.store.read(self.vid, offset, length, sid=self.sid)

    def _gather(self) -> None:
        """The replies of the deferred reads and of those given to the workers, into the batch."""
        if self._deferred:
            self._serve_deferred()
        if self._readers is None or not self._readers.pending:
            return
        self._readers_bytes = 0
        for cookie, offset, length, data, err in self._readers.gather(self.batch.flush):
            if err is not None:
                self._error(cookie, P.wire_errno(err.errno), str(err))
            else:
                self._reply_data(cookie, offset, length, data)

    def _serve_deferred(self) -> None:
        """Serve the reads that missed the page cache, whose disk reads the kernel started
        (side by side, like a worker pool's, without the thread hand-offs): first each again
        without waiting, which also starts the next read of those that needed two (a record
        header, then its data), then what is still missing by waiting for it."""
        todo, self._deferred = self._deferred, []
        later = []
        for req in todo:
            if not self._deferred_read(req, True):
                later.append(req)
        if later:
            self.batch.flush()  # what is ready goes out before this thread waits for the disk
        for req in later:
            self._deferred_read(req, False)

    def _deferred_read(self, req: tuple[int, int, int], nowait: bool) -> bool:
        """Reply to one deferred read; False if it would wait (with ``nowait``)."""
        cookie, offset, length = req
        try:
            data = self.store.read(self.vid, offset, length, sid=self.sid, nowait=nowait)
        except WouldBlock:
            return False
        except VstorError as e:
            self._error(cookie, P.wire_errno(e.errno), str(e))
            return True
        self._reply_data(cookie, offset, length, data)
        return True

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
                "reads_waited": self.reads_waited}

    def _submit(self, fn: Any, *args: Any) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(POOL_WORKERS, thread_name_prefix=f"nbd-{self.peer}")
        self._pool.submit(fn, *args)
