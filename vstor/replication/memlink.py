"""An in-memory network for replication: both arrays of a pair in one process, with faults.

:class:`MemNet` stands for the network between arrays. Each array joins it under its
endpoint address and identity (:meth:`MemNet.attach`); its manager dials with
:meth:`MemNet.dialer`, which gives a :class:`~vstor.replication.transport.Conn` over a
:class:`MemSocket` and runs the peer's ``serve`` on the other end in a thread, as the
listener does after the TLS handshake. Frames are the real wire frames (numbered and
checksummed), so a fault is seen exactly as on TCP:

* ``cut()`` partitions the network: nothing arrives (what is sent is held, as TCP would, and
  delivered after ``heal()``), dials fail, and a receiver waiting on a silent connection
  times out after ``timeout`` seconds of the injected clock;
* ``reset(name)`` closes every connection of an array at once, as a killed process's do;
* ``drop_next``, ``corrupt_next`` lose or flip one byte of the next frames sent;
* ``delay`` holds every frame back for that many seconds of the injected clock.

Waits in real time are short polls (at most 10 ms each); timeouts are measured on the clock,
so a test moves time with the clock and never sleeps.
"""

from __future__ import annotations

import collections
import errno
import threading
from collections.abc import Callable
from typing import Any

from vstor.clock import Clock
from vstor.faults import NO_FAULTS
from vstor.replication import transport, wire

__all__ = ["MemConn", "MemNet", "MemSocket"]

POLL = 0.01  # real seconds between checks of the injected clock while waiting


class _Pipe:
    """One direction of a connection: chunks (one frame each) with the clock time they arrive."""

    def __init__(self) -> None:
        self.chunks: collections.deque[tuple[float, bytearray]] = collections.deque()
        self.eof = False


class MemSocket:
    """One end of an in-memory stream, with the methods Conn uses of a socket."""

    def __init__(self, net: MemNet, inbox: _Pipe, outbox: _Pipe, owner: str) -> None:
        self.net, self.inbox, self.outbox, self.owner = net, inbox, outbox, owner
        self.closed = False

    def sendall(self, data: bytes) -> None:
        net = self.net
        with net.cond:
            if self.closed:
                raise OSError(errno.EBADF, "send on a closed connection")
            if self.outbox.eof and not net.partitioned:  # (a cut network does not carry the close)
                raise BrokenPipeError("the peer closed the connection")
            frame = bytearray(data)
            if net.take(net.drops, self.owner):
                return
            if len(frame) > wire.HEADER_SIZE and net.take(net.corrupts, self.owner):
                mid = wire.HEADER_SIZE + (len(frame) - wire.HEADER_SIZE) // 2
                frame[mid] ^= 0xFF
            self.outbox.chunks.append((net.clock.monotonic() + net.delay, frame))
            net.sent += len(frame)
            net.cond.notify_all()

    def _ready(self) -> bool:
        """Bytes to read now, or the end of the stream (caller holds the net's condition). While
        the network is cut nothing arrives (TCP holds what was sent, and delivers it after)."""
        if self.closed:
            return True
        if self.net.partitioned:
            return False
        chunks = self.inbox.chunks
        return bool(chunks and chunks[0][0] <= self.net.clock.monotonic()) or self.inbox.eof

    def wait_readable(self, timeout: float) -> bool:
        """Whether bytes (or the end) can be read, waiting up to ``timeout`` real seconds."""
        with self.net.cond:
            if not self._ready() and timeout > 0:
                self.net.cond.wait_for(self._ready, timeout)
            return self._ready()

    def recv_into(self, view: memoryview, n: int) -> int:
        net = self.net
        deadline = net.clock.monotonic() + net.timeout
        with net.cond:
            while not self._ready():
                if net.clock.monotonic() >= deadline:
                    raise TimeoutError("timed out")
                net.cond.wait(POLL)
            if self.closed or not self.inbox.chunks or self.inbox.chunks[0][0] > net.clock.monotonic():
                return 0  # the end of the stream
            _, chunk = self.inbox.chunks[0]
            k = min(n, len(chunk), len(view))
            view[:k] = chunk[:k]
            if k == len(chunk):
                self.inbox.chunks.popleft()
            else:
                del chunk[:k]
            return k

    def shutdown(self, how: int = 0) -> None:
        with self.net.cond:
            self.closed = True  # this end reads the end of the stream at once, the peer after the data
            self.inbox.eof = self.outbox.eof = True
            self.net.cond.notify_all()

    def close(self) -> None:
        self.shutdown()


class MemConn(transport.Conn):
    """A Conn over a MemSocket: waits for frames on the injected clock, not with select."""

    sock: MemSocket  # type: ignore[assignment]

    def readable(self, timeout: float) -> bool:
        return self.sock.wait_readable(timeout)

    def close(self) -> None:
        self.closed = True
        self.sock.close()  # ends a read in another thread, as close_tls does for TLS


class MemNet:
    """The network between arrays in one process. ``clock`` paces (bandwidth caps advance it
    instead of sleeping), delays frames and times out silent connections."""

    def __init__(self, clock: Any, timeout: float = transport.TIMEOUT) -> None:
        self.clock: Clock = clock
        self.timeout = timeout
        self.cond = threading.Condition()
        self.partitioned = False
        self.drops: dict[str | None, int] = {}  # sender (None: anyone) -> frames to lose
        self.corrupts: dict[str | None, int] = {}  # ... frames to flip a byte of
        self.delay = 0.0
        self.sent = 0  # bytes delivered to the network, every connection, both ways
        self.dials = 0
        self._ends: dict[str, tuple[str, Callable[..., None]]] = {}  # address -> (name, serve)
        self._socks: list[MemSocket] = []
        self.threads: list[threading.Thread] = []

    # -- membership -------------------------------------------------------------------------
    def attach(self, address: str, name: str, serve: Callable[..., None]) -> None:
        """Array ``name`` serves connections to ``address`` with ``serve(conn, first)``."""
        with self.cond:
            self._ends[address] = (name, serve)

    def detach(self, address: str) -> None:
        with self.cond:
            self._ends.pop(address, None)

    def dialer(self, name: str) -> Callable[..., transport.Conn]:
        """The ``dial`` of array ``name``'s replication manager."""
        def dial(pair: Any, faults: Any = None, rate: int = 0, compress: bool = False) -> transport.Conn:
            return self.connect(name, pair.peer, faults=faults, rate=rate, compress=compress)
        return dial

    def connect(self, name: str, address: str, **kw: Any) -> MemConn:
        with self.cond:
            end = self._ends.get(address)
            if self.partitioned:
                raise TimeoutError(f"{address}: no route (the network is cut)")
            if end is None:
                raise ConnectionRefusedError(f"{address}: connection refused (nothing listens there)")
            self.dials += 1
            there, here = _Pipe(), _Pipe()
            client, server = MemSocket(self, here, there, name), MemSocket(self, there, here, end[0])
            self._socks += [client, server]
        pacer = transport.Pacer(int(kw.get("rate") or 0), self.clock.monotonic, self._pause)
        faults = kw.pop("faults", None) or NO_FAULTS
        conn = MemConn(client, end[0], faults, pacer=pacer, **kw)  # type: ignore[arg-type]
        served = MemConn(server, name)  # type: ignore[arg-type]
        t = threading.Thread(target=self._serve, args=(end[1], served), name=f"mem-in-{name}", daemon=True)
        self.threads.append(t)
        t.start()
        return conn

    @staticmethod
    def _serve(serve: Callable[..., None], conn: MemConn) -> None:
        try:
            serve(conn, None)
        finally:
            conn.close()

    def _pause(self, seconds: float) -> None:
        """The pacer's sleep: time passes on the clock (a ManualClock-like one has ``advance``)."""
        self.clock.advance(seconds)  # type: ignore[attr-defined]

    # -- faults -------------------------------------------------------------------------------
    def cut(self) -> None:
        with self.cond:
            self.partitioned = True

    def heal(self) -> None:
        with self.cond:
            self.partitioned = False
            self.cond.notify_all()

    def reset(self, name: str) -> None:
        """Close every connection array ``name`` has, at both ends (its process died)."""
        with self.cond:
            for s in self._socks:
                if s.owner == name:
                    s.inbox.eof = s.outbox.eof = True
            self._socks = [s for s in self._socks if not s.inbox.eof]
            self.cond.notify_all()

    def drop_next(self, n: int = 1, sender: str | None = None) -> None:
        """Lose the next ``n`` frames sent (by array ``sender`` only, if given)."""
        with self.cond:
            self.drops[sender] = self.drops.get(sender, 0) + n

    def corrupt_next(self, n: int = 1, sender: str | None = None) -> None:
        """Flip a byte in the middle of each of the next ``n`` frames sent (by ``sender``)."""
        with self.cond:
            self.corrupts[sender] = self.corrupts.get(sender, 0) + n

    @staticmethod
    def take(counts: dict[str | None, int], sender: str) -> bool:
        """Whether a fault armed in ``counts`` fires on this frame of ``sender`` (counts it)."""
        for key in (sender, None):
            if counts.get(key):
                counts[key] -= 1
                return True
        return False

    def join(self, timeout: float = 10.0) -> None:
        """Wait for the serving threads to end (after a reset or the arrays' stop)."""
        for t in list(self.threads):
            t.join(timeout)
        self.threads = [t for t in self.threads if t.is_alive()]
