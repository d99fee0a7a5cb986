"""One NBD client connection: the handshake, then the transmission loop.

The connection's thread reads every request. Requests that need no durability are served
right there, in arrival order, into and out of one reusable buffer (``recv_into`` the
payload, ``sendmsg`` of header and data together): READ, WRITE, TRIM, WRITE_ZEROES, CACHE,
BLOCK_STATUS. Requests that must wait for the journal to be durable -- FLUSH, and any
command with FUA, whose data is applied first -- go to a small worker pool, so the
connection keeps reading while they wait: replies come out of order, as the protocol
allows. Several requests are thus in flight per connection, and a flush covers every write
already answered (the store's sync is a group commit over the whole journal, which also
makes CAN_MULTI_CONN safe).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vstor.errors import VstorError
from vstor.nbd import proto as P
from vstor.nbd.negotiate import CONTEXT_ID, Negotiation, Session
from vstor.nbd.tlsdir import peer_common_name
from vstor.nbd.transmit import allocation_extents, check
from vstor.store.allocation import mapped_ranges

log = logging.getLogger("vstor.nbd")

SYNC_WORKERS = 4  # FLUSH/FUA waits per connection in parallel with its reading


class Disconnected(Exception):
    """The client closed the connection (or the server shut it down)."""


class Connection:
    def __init__(self, sock: socket.socket, peer: str, host: Any) -> None:
        self.raw = self.sock = sock
        self.peer, self.host = peer, host
        self.tls = False
        self.cn: str | None = None
        self.export = ""
        self.session: Session | None = None
        self.ops = self.bytes_read = self.bytes_written = 0
        self._send_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._buf = bytearray(1 << 20)
        self._view = memoryview(self._buf)

    # -- socket helpers ------------------------------------------------------------------------------
    def _recv_into(self, view: memoryview) -> None:
        n, got = len(view), 0
        while got < n:
            k = self.sock.recv_into(view[got:] if got else view, n - got)
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
        if n > len(self._buf):
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
            if step.replies:
                self._send(*step.replies)
            if step.action == "starttls":
                self.sock = self.raw = host.tls_ctx.wrap_socket(self.raw, server_side=True)  # takes over the fd
                self.tls, self.cn = True, peer_common_name(self.sock)  # type: ignore[arg-type]
                neg.tls_started(self.cn)
            elif step.action == "go":
                assert step.export is not None
                self.export = step.export.name
                return neg.session(step.export)
            elif step.action == "abort":
                return None
            elif step.action == "close":
                log.info("nbd: closed the connection from %s: %s", self.peer, step.why)
                return None

    # -- transmission ------------------------------------------------------------------------------------
    def serve(self, session: Session) -> None:
        """Serve requests until DISC, end of file or a protocol error; then wait for the
        requests still in the pool."""
        self.session = session
        target = session.export.key
        self.vid, self.sid = target.vid, target.sid  # type: ignore[attr-defined]
        self.store = self.host.store
        hdr = bytearray(P.REQUEST.size)
        hview = memoryview(hdr)
        unpack = P.REQUEST.unpack_from
        closing = self.host.closing
        try:
            while True:
                self._recv_into(hview)
                magic, flags, cmd, cookie, offset, length = unpack(hdr)
                if magic != P.REQUEST_MAGIC:
                    raise P.ProtocolError(f"bad request magic {magic:#x}")
                payload = None
                if cmd == P.CMD_WRITE:
                    if length > P.MAX_PAYLOAD:
                        raise P.ProtocolError(f"a write of {length} bytes (the maximum payload is {P.MAX_PAYLOAD})")
                    payload = self._buffer(length)
                    self._recv_into(payload)
                elif cmd == P.CMD_DISC:
                    return
                self.ops += 1
                if closing.is_set():
                    self._error(cookie, P.ESHUTDOWN, "the array is stopping: disconnect")
                    continue
                err, msg = check(cmd, flags, offset, length, session)
                if err:
                    self._error(cookie, err, msg)
                    continue
                try:
                    self._run(cmd, flags, cookie, offset, length, payload)
                except VstorError as e:
                    self._error(cookie, P.wire_errno(e.errno), str(e))
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def _run(self, cmd: int, flags: int, cookie: int, offset: int, length: int, payload: memoryview | None) -> None:
        store, vid = self.store, self.vid
        if cmd == P.CMD_READ:
            view = self._buffer(length)
            store.read_into(vid, offset, view, sid=self.sid)
            self.bytes_read += length
            if self.session.structured:  # type: ignore[union-attr]
                self._send(P.offset_data_header(cookie, offset, length, True), view)
            else:
                self._send(P.simple_reply(cookie), view)
            return
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
            self._send(P.block_status_chunk(cookie, CONTEXT_ID, extents))
            return
        if cmd == P.CMD_FLUSH or flags & P.CMDF_FUA:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(SYNC_WORKERS, thread_name_prefix=f"nbd-sync-{self.peer}")
            self._pool.submit(self._durable_reply, cookie)
            return
        self._send(P.simple_reply(cookie))

    def _durable_reply(self, cookie: int) -> None:
        """FLUSH and FUA: the same store call as fsync through FUSE, then the reply."""
        try:
            self.store.sync()
        except VstorError as e:
            self._safe(self._error, cookie, P.wire_errno(e.errno), str(e))
            return
        self._safe(self._send, P.simple_reply(cookie))

    def _safe(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except (OSError, ssl.SSLError) as e:
            log.info("nbd: reply to %s failed: %s", self.peer, e)

    def _error(self, cookie: int, err: int, message: str) -> None:
        if self.session is not None and self.session.structured:
            self._send(P.error_chunk(cookie, err, message))
        else:
            self._send(P.simple_reply(cookie, err))

    def counters(self) -> dict:
        return {"ops": self.ops, "bytes_read": self.bytes_read, "bytes_written": self.bytes_written}
