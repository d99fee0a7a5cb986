"""One NBD client's socket: buffered receives, gathered sends, and the switch to TLS.

Requests are received through a buffer, so one ``recv`` brings every header (and small
payload) the client has queued; :meth:`Wire.take` parses them from it one by one without a
system call. With a poller (once requests flow) an empty buffer waits for input by polling
for a short while before the thread sleeps in ``recv`` (poll.py says why). :meth:`Wire.send`
sends several buffers with one ``sendmsg`` (plain TCP) and is safe from several threads (the
connection's, its sender and its durability workers); over TLS it joins them and uses
``sendall`` (an ssl socket takes no ``sendmsg``). A thread holding its server's serving turn
(turns.py) sends without waiting and leaves the turn before it would wait: for the socket to
take more, or for another thread's send.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import threading
from typing import Any

from vstor.nbd.serving.poll import RequestPoller
from vstor.nbd.serving.turns import ServingTurn

__all__ = ["Disconnected", "RBUF", "Wire"]

RBUF = 256 << 10  # receive buffer: request headers (and small payloads) come in batches


class Disconnected(Exception):
    """The client closed the connection (or the server shut it down)."""


class Wire:
    def __init__(self, sock: socket.socket) -> None:
        self.raw: Any = sock  # the socket; after STARTTLS the ssl socket over the same fd
        self.sock: Any = sock
        self.tls = False
        self._send_lock = threading.Lock()
        self._rbuf = bytearray(RBUF)  # received, not yet parsed: [_rpos, _rend)
        self._rmv = memoryview(self._rbuf)
        self._rpos = self._rend = 0
        self.poller: RequestPoller | None = None  # set for the transmission phase
        self.turn = ServingTurn()  # its server's serving turn once serving (held only over plain TCP)
        self._pollset: select.poll | None = None

    def buffered(self) -> int:
        """Bytes received and not yet taken."""
        return self._rend - self._rpos

    def take(self, st: struct.Struct) -> tuple | None:
        """The next ``st`` from the buffer, or None if it is not all there yet."""
        pos = self._rpos
        if self._rend - pos < st.size:
            return None
        self._rpos = pos + st.size
        return st.unpack_from(self._rbuf, pos)

    def fill(self, need: int) -> None:
        """Have at least ``need`` (<= RBUF) bytes buffered, waiting for the client if needed."""
        if self._rend - self._rpos >= need:
            return
        if self._rpos:  # move the partial rest to the front
            n = self._rend - self._rpos
            self._rmv[:n] = self._rmv[self._rpos : self._rend]
            self._rpos, self._rend = 0, n
        while self._rend < need:
            k = self._poll() if self.poller is not None else None
            if k is None:
                k = self.sock.recv_into(self._rmv[self._rend :])
            if not k:
                raise Disconnected("the client closed the connection")
            self._rend += k

    def _poll(self) -> int | None:
        """Poll for input for up to the poller's budget (or not at all, if it says so). Plain
        TCP: the bytes received (0: the end) if some came, polling with ``recv(MSG_DONTWAIT)``.
        Over TLS (an ssl socket takes no recv flags) it polls for readiness, the ssl object's
        decrypted bytes and then the descriptor, and leaves the receiving to the caller. None:
        nothing received yet; the caller receives, sleeping in recv only if nothing came."""
        poller = self.poller
        assert poller is not None
        if self.tls and self._tls_ready():
            return None  # a record is here already (a TLS receive brings one at a time): no polling
        until = poller.begin()
        if until is None:
            return None
        clock, caught = poller.clock, False
        try:
            if not self.tls:
                view = self._rmv[self._rend :]
                while True:
                    try:
                        k: int = self.sock.recv_into(view, 0, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        if clock() < until:
                            continue
                        return None
                    caught = True
                    return k
            ready = self._tls_ready
            while not (caught := ready()) and clock() < until:
                pass
            return None
        finally:
            poller.end(caught)

    def _tls_ready(self) -> bool:
        """Over TLS: decrypted bytes wait in the ssl object, or bytes on the descriptor."""
        if self.sock.pending():
            return True
        if self._pollset is None:  # the same descriptor before and after STARTTLS
            self._pollset = select.poll()
            self._pollset.register(self.raw.fileno(), select.POLLIN)
        return bool(self._pollset.poll(0))

    def recv_into(self, view: memoryview) -> None:
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

    def recv(self, n: int) -> bytes:
        buf = bytearray(n)
        if n:
            self.recv_into(memoryview(buf))
        return bytes(buf)

    def send(self, *parts: bytes | memoryview) -> None:
        turn = self.turn
        if not turn.held() or not self._send_lock.acquire(blocking=False):
            turn.leave()  # (if held) waiting for another thread's send: not in our turn
            self._send_lock.acquire()
        try:
            if self.tls:
                self.sock.sendall(b"".join(parts) if len(parts) > 1 else parts[0])
                return
            bufs = list(parts)
            total = sum(len(b) for b in bufs)
            while total:
                if turn.held():
                    try:
                        sent = self.sock.sendmsg(bufs, (), socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        turn.leave()  # the socket is full: wait for the client outside our turn
                        continue
                else:
                    sent = self.sock.sendmsg(bufs)
                total -= sent
                while sent and bufs:  # drop what went out, keep the rest of a partly sent buffer
                    if sent >= len(bufs[0]):
                        sent -= len(bufs.pop(0))
                    else:
                        bufs[0] = memoryview(bufs[0])[sent:]
                        sent = 0
        finally:
            self._send_lock.release()

    def start_tls(self, ctx: ssl.SSLContext) -> None:
        """The TLS handshake as the server; plain bytes the client sent ahead of it are dropped,
        never obeyed. The ssl socket takes over the descriptor."""
        self._rpos = self._rend = 0
        self.sock = self.raw = ctx.wrap_socket(self.raw, server_side=True)
        self.tls = True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.raw, socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(OSError):
            self.raw.close()
