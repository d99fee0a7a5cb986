"""The replication endpoint: accept TLS connections, admit the ones that complete the handshake.

A connection is *pending* from its accept until the TLS handshake (which checks the peer's
certificate against the pair CA) and its first frame (the HELLO) are done. Pending
connections cost a descriptor and a thread each, and anyone who can reach the port can make
them, so they are bounded:

* at most ``cap`` are pending at once (:func:`pending_cap`: 16, and never more than 1/16 of
  the ``nofile`` limit, so peers cannot take the descriptors local I/O needs); a connection
  over the cap is closed at once and counted;
* a pending connection that has not finished the handshake ``handshake_timeout`` seconds
  after its accept is shut down (by the accept loop, which wakes every ``tick`` seconds).

Nothing a peer does ends the listener: failed accepts (EMFILE and ENFILE included) and
failed thread starts are logged, with a short pause, and accepting goes on. Repeated events
are logged at most :data:`LOG_BURST` times per :data:`LOG_INTERVAL` seconds each. :meth:`Listener.describe` tells
``array status`` whether the listener is serving, and if its thread died, why.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import resource
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

from vstor.clock import Clock, SystemClock
from vstor.errors import UsageError
from vstor.faults import NO_FAULTS, Faults
from vstor.replication import pki, wire
from vstor.replication.transport import TIMEOUT, Conn, parse_address

log = logging.getLogger("vstor.replication")

PENDING_CAP = 16  # connections between accept and HELLO, at most
NOFILE_SHARE = 16  # ... and at most 1/16 of the descriptor limit
HANDSHAKE_TIMEOUT = 5.0  # seconds from accept to a received HELLO
ACCEPT_PAUSE = 0.1  # seconds to wait after a failed accept or thread start: never spin
LOG_INTERVAL, LOG_BURST = 10.0, 5  # at most 5 log lines about one kind of event per 10 seconds

Handler = Callable[[Conn, tuple[int, bytes]], None]


def pending_cap(cap: int = PENDING_CAP, nofile: int | None = None) -> int:
    """The cap on pending connections: ``cap``, and at most 1/16 of the soft ``nofile`` limit."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY or nofile <= 0:
        return cap
    return max(1, min(cap, nofile // NOFILE_SHARE))


class Throttle:
    """Log a repeating event at most ``burst`` times per ``interval`` seconds; the next line
    after a quiet spell says how many were left out."""

    def __init__(self, clock: Clock, interval: float = LOG_INTERVAL, burst: int = LOG_BURST) -> None:
        self.clock, self.interval, self.burst = clock, interval, burst
        self.start: float | None = None
        self.logged = self.skipped = 0
        self._lock = threading.Lock()

    def warn(self, msg: str, *args: object) -> None:
        now = self.clock.monotonic()
        with self._lock:
            if self.start is None or now - self.start >= self.interval:
                if self.skipped:
                    msg += f" ({self.skipped} more like this were not logged)"
                self.start, self.logged, self.skipped = now, 0, 0
            if self.logged >= self.burst:
                self.skipped += 1
                return
            self.logged += 1
        log.warning(msg, *args)


@dataclass
class _Pending:
    sock: socket.socket  # the raw socket, then the TLS socket wrapping it
    peer: str
    deadline: float
    expired: bool = False
    stage: str = "TLS authentication"  # then "HELLO"


COUNTERS = ("accepted", "rejected_busy", "handshake_timeouts", "handshake_failures", "thread_failures",
            "accept_errors")  # rejected_busy: closed at once because the pending cap was reached


class Listener:
    """Accepts connections on ``address``; each one that completes the TLS handshake and sends its
    first frame in time goes to ``handle(conn, (ftype, body))``, in its own thread."""

    def __init__(self, address: str, tls_dir: str, name: str, handle: Handler, faults: Faults = NO_FAULTS,
                 clock: Clock | None = None, cap: int | None = None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 thread_factory: Callable[..., threading.Thread] = threading.Thread,
                 conn_factory: Callable[..., Conn] = Conn) -> None:
        host, port = parse_address(address)
        self.ctx = pki.tls_context(tls_dir, name, server=True)
        self.handle, self.faults = handle, faults
        self.clock = clock or SystemClock()
        self.cap = pending_cap() if cap is None else cap
        self.handshake_timeout = handshake_timeout
        self.tick = min(1.0, handshake_timeout / 4)  # how often the accept loop checks deadlines
        self.thread_factory = thread_factory
        self.conn_factory = conn_factory  # the backup client listener brings its own frames
        try:
            self.sock = socket.create_server((host, port), reuse_port=False)
        except OSError as e:
            raise UsageError(f"cannot listen on {address}: {e.strerror}") from None
        self.sock.settimeout(self.tick)
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self.stats = dict.fromkeys(COUNTERS, 0)
        self._log = {k: Throttle(self.clock) for k in ("busy", "handshake", "thread", "accept")}
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._down = ""
        self._thread = threading.Thread(target=self._serve, name="repl-listener", daemon=True)
        self._stopped = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def describe(self) -> dict:
        """The listener's state for ``array status``: serving, stopped, or down and why."""
        if self._stopped.is_set():
            state = "stopped"
        elif self._thread.is_alive():
            state = "serving"
        elif self._thread.ident is None:
            state = "not started"
        else:
            state = f"down: {self._down or 'the listener thread ended'}"
        with self._lock:
            return {"address": self.address, "state": state, "pending": len(self._pending), "pending_cap": self.cap,
                    "handshake_timeout": self.handshake_timeout, **self.stats}

    def _count(self, counter: str) -> None:
        with self._lock:
            self.stats[counter] += 1

    # -- the accept loop ------------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            while not self._stopped.is_set():
                try:
                    self._serve_once()
                except Exception as e:  # a bug: log it, keep listening
                    log.exception("replication listener %s: unexpected error: %s; still listening", self.address, e)
                    self._stopped.wait(ACCEPT_PAUSE)
        except BaseException as e:  # the thread ends: say so in the log and in array status
            self._down = f"{type(e).__name__}: {e}"
            log.critical("replication listener %s is DOWN: %s", self.address, self._down)

    def _serve_once(self) -> None:
        """Expire overdue handshakes, then accept one connection (or time out after ``tick``)."""
        self.reap()
        try:
            self.faults.hit("repl.accept")
            raw, addr = self.sock.accept()
        except TimeoutError:
            return
        except OSError as e:
            if self._stopped.is_set() or e.errno in (errno.EBADF, errno.EINVAL):
                self._stopped.set()  # the socket is closed: stop() was called
                return
            self._count("accept_errors")
            self._log["accept"].warn("replication listener %s: accept failed: %s; still listening", self.address, e)
            self._stopped.wait(ACCEPT_PAUSE)  # EMFILE, ENFILE, ENOMEM ... do not spin; stop() cuts it short
            return
        self._admit(raw, addr[0])

    def _admit(self, raw: socket.socket, peer: str) -> None:
        with self._lock:
            busy = len(self._pending) >= self.cap
            if not busy:
                key = next(self._ids)
                self._pending[key] = _Pending(raw, peer, self.clock.monotonic() + self.handshake_timeout)
        if busy:
            self._count("rejected_busy")
            _close(raw)
            self._log["busy"].warn("replication listener %s: %d connections are already in their handshake; "
                                   "closed one from %s", self.address, self.cap, peer)
            return
        self._count("accepted")
        try:
            self.thread_factory(target=self._handshake, args=(key, raw, peer), daemon=True,
                                name=f"repl-in-{peer}").start()
        except Exception as e:  # RuntimeError: can't start new thread
            self._forget(key)
            _close(raw)
            self._count("thread_failures")
            self._log["thread"].warn("replication listener %s: cannot start a thread for a connection from %s: "
                                     "%s; closed it, still listening", self.address, peer, e)
            self._stopped.wait(ACCEPT_PAUSE)

    def reap(self) -> int:
        """Shut down the pending connections past their deadline (their threads then close them)."""
        now, n = self.clock.monotonic(), 0
        with self._lock:
            for p in self._pending.values():
                if not p.expired and now >= p.deadline:
                    p.expired = True
                    n += 1
                    with contextlib.suppress(OSError):  # the plain socket's shutdown, even on a TLS socket
                        socket.socket.shutdown(p.sock, socket.SHUT_RDWR)
        return n

    def _forget(self, key: int) -> _Pending | None:
        with self._lock:
            return self._pending.pop(key, None)

    # -- one connection --------------------------------------------------------------------------
    def _handshake(self, key: int, raw: socket.socket, peer: str) -> None:
        """TLS, then the first frame, before the deadline; then the connection goes to ``handle``."""
        sock: socket.socket = raw
        try:
            raw.settimeout(self.handshake_timeout + self.tick)  # each step; reap() bounds the sum
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                p = self._pending.get(key)
                if p is None:  # stop() came first
                    raise ConnectionAbortedError("the listener is stopping")
                sock = p.sock = self.ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            sock.do_handshake()
            conn = self.conn_factory(sock, pki.peer_name(sock), self.faults)
            p.stage = "HELLO"
            first = conn.recv()
        except (OSError, ssl.SSLError, UsageError, wire.BadFrame) as e:
            self._failed(self._forget(key), peer, e)
            _close(sock)
            return
        if self._forget(key) is None:  # stop() is closing everything
            conn.close()
            return
        sock.settimeout(TIMEOUT)
        try:
            self.handle(conn, first)
        finally:
            conn.close()

    def _failed(self, p: _Pending | None, peer: str, e: Exception) -> None:
        if p is None:  # stop() is closing everything
            return
        if p.expired or isinstance(e, TimeoutError):  # the reaper's deadline, or the socket's
            self._count("handshake_timeouts")
            self._log["handshake"].warn("replication listener %s: closed a connection from %s: no HELLO within "
                                        "%.0fs of its accept", self.address, peer, self.handshake_timeout)
        else:
            self._count("handshake_failures")
            self._log["handshake"].warn("refused a connection from %s: %s failed: %s", peer, p.stage, e)

    def stop(self) -> None:
        """Stop accepting, end the listener thread and the pending handshakes. Closing alone does not
        wake an accept blocked in another thread on Linux; shutdown does (it fails with EINVAL)."""
        self._stopped.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for p in pending:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(p.sock, socket.SHUT_RDWR)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
