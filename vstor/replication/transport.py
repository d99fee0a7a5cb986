"""Frames over mutually authenticated TLS: connect, send and receive, pace, back off.

A thin adapter around wire.py. Every connection checks the peer's certificate against the
pair CA (pki.tls_context) before any frame is read; the verified common name is the peer's
identity for authorization (the listening side is listener.py). Receives time out after
``timeout`` seconds, so a cut link is noticed even when TCP is silent: the primary sends PING
frames when idle.
"""

from __future__ import annotations

import logging
import os
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable

from vstor.errors import UsageError
from vstor.faults import NO_FAULTS, Faults
from vstor.replication import pki, wire

log = logging.getLogger("vstor.replication")

DEFAULT_PORT = 7450
TIMEOUT = 5.0  # seconds without a frame before a connection is declared dead


BACKGROUND_NICE = 10  # replication threads yield the CPU to host I/O (Linux: nice is per thread)


def background_thread() -> None:
    """Lower the calling thread's CPU priority: shipping and applying are background work, and
    host I/O must not wait for them (the pair is asynchronous)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except OSError:
        log.warning("could not lower the priority of replication thread %s", threading.current_thread().name)


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"invalid address {text!r}: use HOST:PORT, like 10.0.0.2:{DEFAULT_PORT}")
    return host, int(port)


class Pacer:
    """A token bucket: at most ``rate`` bytes per second on average, bursts of 1/4 second."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self.tokens = rate / 4
        self.last = clock()

    def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = self.clock()
        self.tokens = min(self.rate / 4, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= n
        if self.tokens < 0:
            self.sleep(-self.tokens / self.rate)


class Backoff:
    """Reconnect delays: 0.5 s doubling to ``cap``, with +-25% jitter, reset after a success."""

    def __init__(self, first: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.first, self.cap, self.rng = first, cap, rng or random.Random()
        self.current = 0.0

    def next(self) -> float:
        self.current = self.first if not self.current else min(self.cap, self.current * 2)
        return self.current * self.rng.uniform(0.75, 1.25)

    def reset(self) -> None:
        self.current = 0.0


class Conn:
    """One established connection. ``send`` may be called from several threads.

    ``sock`` is a TLS socket, or anything with its stream methods (``sendall``, ``recv_into``,
    ``shutdown``, ``close``): memlink.MemSocket runs both sides of a pair in one process."""

    def __init__(self, sock: ssl.SSLSocket, peer_name: str, faults: Faults = NO_FAULTS,
                 rate: int = 0, compress: bool = False, pacer: Pacer | None = None) -> None:
        self.sock, self.peer_name, self.faults = sock, peer_name, faults
        self.pacer = pacer or Pacer(rate)
        self.compress = compress
        self._send_lock = threading.Lock()
        self._out_no = self._in_no = 0
        self.bytes_out = self.bytes_in = 0
        self.closed = False

    def send(self, ftype: int, payload: bytes = b"") -> int:
        with self._send_lock:
            frame = wire.pack_frame(ftype, payload, self._out_no, self.compress and ftype in (wire.BATCH, wire.COPY))
            if self.faults.hit("repl.tamper") == "torn" and len(frame) > wire.HEADER_SIZE + 8:
                mid = wire.HEADER_SIZE + (len(frame) - wire.HEADER_SIZE - 8) // 2
                frame = frame[:mid] + bytes([frame[mid] ^ 0xFF]) + frame[mid + 1 :]  # after the checksum
            self.pacer.take(len(frame))
            self.sock.sendall(frame)
            self._out_no += 1
            self.bytes_out += len(frame)
            return len(frame)

    def send_json(self, ftype: int, obj: dict) -> None:
        self.send(ftype, wire.pack_json(obj))

    def recv(self) -> tuple[int, bytes]:
        head = self._exact(wire.HEADER_SIZE)
        ftype, flags, length = wire.parse_header(head, self._in_no)
        payload = self._exact(length)
        trailer = self._exact(wire.TRAILER.size)
        body = wire.check_payload(head, payload, trailer, flags)
        self._in_no += 1
        self.bytes_in += wire.HEADER_SIZE + length + wire.TRAILER.size
        return ftype, body

    def readable(self, timeout: float) -> bool:
        """Whether a frame's first bytes can be read, waiting up to ``timeout`` seconds."""
        return bool(self.sock.pending() or select.select([self.sock], [], [], timeout)[0])

    def _exact(self, n: int) -> bytes:
        return recv_exact(self.sock, n, self.peer_name)

    def close(self) -> None:
        self.closed = True
        close_tls(self.sock)


def recv_exact(sock: socket.socket, n: int, peer_name: str, have: bytearray | None = None) -> bytes:
    """Exactly ``n`` bytes of a frame: first from ``have`` (bytes already read ahead, consumed),
    then from the socket; ConnectionError if the peer closes first. A bytearray, returned as
    bytes-like without a copy (callers only read it)."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    if have:
        got = min(n, len(have))
        buf[:got] = have[:got]
        del have[:got]
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, 4 << 20))
        if not k:
            raise ConnectionError(f"{peer_name} closed the connection" + (" in the middle of a frame" if got else ""))
        got += k
    return buf  # type: ignore[return-value]


def close_tls(sock: socket.socket) -> None:
    """Shut a (TLS) connection down and close it, safe while another thread reads it.

    ``ssl.SSLSocket.shutdown`` drops the TLS state first, so a thread still in ``recv`` would go
    on reading the raw ciphertext as if it were frames (a false "tampered" or "bad magic"). The
    TCP shutdown under it instead ends that read with an end of stream or an error."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def open_tls(address: str, tls_dir: str, name: str, timeout: float) -> ssl.SSLSocket:
    """A mutual-TLS socket to ``address`` as ``name`` (certificates from ``vstor pki`` in
    ``tls_dir``), TCP_NODELAY, ``timeout`` on every operation; raises OSError/ssl errors."""
    host, port = parse_address(address)
    ctx = pki.tls_context(tls_dir, name, server=False)
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = ctx.wrap_socket(raw)
        sock.settimeout(timeout)
        return sock
    except BaseException:
        raw.close()
        raise


def connect(address: str, tls_dir: str, name: str, timeout: float = TIMEOUT, **kw: object) -> Conn:
    """Open a TLS connection to ``address`` as array ``name``; raises OSError/ssl errors."""
    sock = open_tls(address, tls_dir, name, timeout)
    return Conn(sock, pki.peer_name(sock), **kw)  # type: ignore[arg-type]
