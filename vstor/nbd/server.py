"""The NBD endpoint of a running array: accept, negotiate, serve, stop softly.

Bounded like the replication endpoint (vstor/replication/listener.py, whose cap and log
throttle it reuses): a connection is *pending* from its accept until its GO; at most
``cap`` are pending at once (more are closed at once and counted), each must reach GO
within ``handshake_timeout`` seconds (the accept loop shuts down the late ones), and at most
``max_clients`` connections are served at once. Failed accepts and thread starts are
logged, throttled, and accepting goes on. Each connection has its own thread (and a small
worker pool for FLUSH/FUA), so a slow client stalls no other.

:meth:`NbdServer.stop` is the soft disconnect of ``array stop``: new connections are
refused, every request that arrives from then on is answered ESHUTDOWN (the protocol's
"please disconnect"), requests in flight finish, the journal is synced, and connections
idle ones are closed (NBD cannot tell an idle client anything: it sees ESHUTDOWN or a
closed connection at its next request). A connection still mid-request after ``grace``
seconds is closed too.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from vstor.clock import Clock, SystemClock
from vstor.errors import UsageError, VstorError
from vstor.faults import NO_FAULTS, Faults
from vstor.nbd import proto as P
from vstor.nbd.catalog import ExportCatalog
from vstor.nbd.serving.conn import EXPORT_COUNTERS, Connection
from vstor.nbd.serving.poll import NBD_POLL, PollToken, RequestPoller
from vstor.nbd.serving.turns import ServingTurn
from vstor.nbd.serving.wire import Disconnected
from vstor.nbd.tlsdir import server_context
from vstor.replication.listener import Throttle, pending_cap

log = logging.getLogger("vstor.nbd")

HANDSHAKE_TIMEOUT = 10.0  # seconds from accept to GO
MAX_CLIENTS = 64  # connections in transmission at once
STOP_GRACE = 5.0  # seconds clients get to disconnect after ESHUTDOWN at array stop
ACCEPT_PAUSE = 0.1
COUNTERS = ("accepted", "rejected_busy", "handshake_timeouts", "handshake_failures", "thread_failures",
            "accept_errors", "refused")


class NbdServer:
    def __init__(self, address: str, store: Any, catalog: ExportCatalog, tls_dir: str | None = None,
                 tls_name: str | None = None, faults: Faults = NO_FAULTS, clock: Clock | None = None,
                 cap: int | None = None, handshake_timeout: float = HANDSHAKE_TIMEOUT, max_clients: int = MAX_CLIENTS,
                 thread_factory: Callable[..., threading.Thread] = threading.Thread, poll: float = NBD_POLL) -> None:
        host, port = parse_address(address)
        self.store, self.catalog, self.faults = store, catalog, faults
        self.tls_ctx: ssl.SSLContext | None = server_context(tls_dir, tls_name) if tls_dir else None
        self.clock = clock or SystemClock()
        self.cap = pending_cap() if cap is None else cap
        self.handshake_timeout, self.max_clients = handshake_timeout, max_clients
        self.tick = min(1.0, handshake_timeout / 4)
        self.thread_factory = thread_factory
        self.poll, self._poll_token = poll, PollToken()  # serving/poll.py: bounded polling for the next request
        self.turn = ServingTurn()  # serving/turns.py: connections serve their batches in turns
        try:
            self.sock = socket.create_server((host, port), reuse_port=False)
        except OSError as e:
            raise UsageError(f"cannot listen for NBD on {address}: {e.strerror}") from None
        self.sock.settimeout(self.tick)
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self.port = self.sock.getsockname()[1]
        self.closing = threading.Event()  # soft stop: ESHUTDOWN to every new request
        self.stats = dict.fromkeys(COUNTERS, 0)
        self._log = {k: Throttle(self.clock) for k in ("busy", "handshake", "thread", "accept")}
        self._pending: dict[int, tuple[Connection, float]] = {}
        self._clients: dict[int, Connection] = {}
        self._retired: dict[str, dict] = {}  # export -> counters of closed connections
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._left = threading.Condition(self._lock)  # notified when a served connection ends
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="nbd-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("NBD server listening on %s (%s)", self.address, "TLS required" if self.tls_ctx else "plain TCP")

    def _count(self, counter: str) -> None:
        with self._lock:
            self.stats[counter] += 1

    # -- the accept loop ----------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                self._serve_once()
            except Exception as e:  # a bug: log it, keep listening
                log.exception("nbd listener %s: unexpected error: %s; still listening", self.address, e)
                self._stopped.wait(ACCEPT_PAUSE)

    def _serve_once(self) -> None:
        self.reap()
        try:
            self.faults.hit("nbd.accept")
            raw, addr = self.sock.accept()
        except TimeoutError:
            return
        except OSError as e:
            if self._stopped.is_set() or e.errno in (errno.EBADF, errno.EINVAL):
                self._stopped.set()
                return
            self._count("accept_errors")
            self._log["accept"].warn("nbd listener %s: accept failed: %s; still listening", self.address, e)
            self._stopped.wait(ACCEPT_PAUSE)
            return
        self._accepted(raw, f"{addr[0]}:{addr[1]}")

    def _accepted(self, raw: socket.socket, peer: str) -> None:
        conn = Connection(raw, peer, self, next(self._ids))
        key = conn.key
        with self._lock:
            busy = len(self._pending) >= self.cap or len(self._clients) >= self.max_clients or self.closing.is_set()
            if not busy:
                self._pending[key] = (conn, self.clock.monotonic() + self.handshake_timeout)
        if busy:
            self._count("rejected_busy")
            conn.close()
            self._log["busy"].warn("nbd listener %s: too many connections (%d in handshake, %d served); closed one "
                                   "from %s", self.address, len(self._pending), len(self._clients), peer)
            return
        self._count("accepted")
        raw.settimeout(self.handshake_timeout + self.tick)
        try:
            self.thread_factory(target=self._run, args=(key, conn), daemon=True, name=f"nbd-{peer}").start()
        except Exception as e:
            with self._lock:
                self._pending.pop(key, None)
            conn.close()
            self._count("thread_failures")
            self._log["thread"].warn("nbd listener %s: cannot start a thread for %s: %s", self.address, peer, e)
            self._stopped.wait(ACCEPT_PAUSE)

    def reap(self) -> int:
        """Shut down the pending connections past their deadline (their threads then end)."""
        now, late = self.clock.monotonic(), []
        with self._lock:
            for key, (conn, deadline) in list(self._pending.items()):
                if now >= deadline:
                    late.append(conn)
                    del self._pending[key]
                    self.stats["handshake_timeouts"] += 1
        for conn in late:
            self._log["handshake"].warn("nbd: closed the connection from %s: no GO within %.0fs", conn.peer,
                                        self.handshake_timeout)
            conn.close()
        return len(late)

    # -- one connection ---------------------------------------------------------------------------
    def admit(self, conn: Connection) -> bool:
        """The connection enters transmission: it is a client now, no longer pending. False if it
        was reaped meanwhile or the server is stopping."""
        with self._lock:
            if self._pending.pop(conn.key, None) is None or self.closing.is_set():
                return False
            self._clients[conn.key] = conn
            return True

    def _run(self, key: int, conn: Connection) -> None:
        try:
            try:
                session = conn.negotiate()
            except (OSError, ssl.SSLError, Disconnected, P.ProtocolError, ValueError) as e:
                with self._lock:
                    late = key not in self._pending
                if not late:
                    self._count("handshake_failures")
                    self._log["handshake"].warn("nbd: handshake with %s failed: %s", conn.peer, e)
                return
            if session is None:
                return  # refused, aborted, reaped or stopping
            log.info("nbd: %s%s attached export %s (%s)", conn.peer, f" ({conn.cn})" if conn.cn else "",
                     conn.export, "read-only" if session.export.read_only else "read-write")
            try:
                conn.raw.settimeout(None)
                conn.serve(session)
            except (OSError, ssl.SSLError, Disconnected, P.ProtocolError) as e:
                log.info("nbd: %s left export %s: %s", conn.peer, conn.export, e)
        except VstorError as e:
            log.warning("nbd: connection from %s ended: %s", conn.peer, e)
        finally:
            with self._lock:
                self._pending.pop(key, None)
                if self._clients.pop(key, None) is not None:
                    r = self._retired.setdefault(conn.export, dict.fromkeys(EXPORT_COUNTERS, 0))
                    for k, v in conn.counters().items():
                        r[k] += v
                    self._left.notify_all()
            conn.close()

    # -- what the control ops see ---------------------------------------------------------------------
    def export_stats(self) -> dict[str, dict]:
        """Per export: clients connected now, and ops/bytes since the daemon started."""
        with self._lock:
            out = {k: dict(v, clients=0) for k, v in self._retired.items()}
            for c in self._clients.values():
                s = out.setdefault(c.export, dict.fromkeys(EXPORT_COUNTERS, 0) | {"clients": 0})
                s["clients"] += 1
                for k, v in c.counters().items():
                    s[k] += v
            return out

    def disconnect(self, export: str) -> int:
        """Shut down the connections to ``export`` (after unexport). Returns how many."""
        with self._lock:
            conns = [c for c in self._clients.values() if c.export == export]
        for c in conns:
            c.close()
        return len(conns)

    def describe(self) -> dict:
        with self._lock:
            return {"address": self.address, "tls": self.tls_ctx is not None,
                    "state": "stopped" if self._stopped.is_set() else "serving", "pending": len(self._pending),
                    "clients": len(self._clients), "pending_cap": self.cap, **self.stats,
                    "poll_us": round(self.poll * 1e6), "polls_caught": self._poll_token.caught,
                    "polls_missed": self._poll_token.missed}

    def poller(self, pays: Callable[[], bool]) -> RequestPoller:
        """A connection's poller for its next requests (serving/poll.py); ``pays``: whether
        polling pays now (the connection's client sends one request at a time, all answered)."""
        return RequestPoller(self.poll, self._poll_token, pays)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """The soft disconnect: refuse new work, let clients finish and leave, sync, close."""
        self.closing.set()
        self._stopped.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with self._lock:
            pending = [c for c, _ in self._pending.values()]
            self._pending.clear()
        for c in pending:
            c.close()
        with self._lock:  # clients mid-request finish it (new ones get ESHUTDOWN); idle ones cannot be told
            deadline = time.monotonic() + grace
            while not all(c.idle() for c in self._clients.values()) and time.monotonic() < deadline:
                self._left.wait(0.02)  # a reply going out is not signalled: look again soon
            left = list(self._clients.values())
        for c in left:
            if not c.idle():
                log.warning("nbd: %s still had requests in flight on %s %.0fs after ESHUTDOWN; closing it", c.peer,
                            c.export, grace)
            c.close()
        with self._lock:  # their threads finish the requests in flight, then end
            self._left.wait_for(lambda: not self._clients, grace)
        try:
            self.store.sync()  # every write a client saw answered is durable before the store closes
        except VstorError as e:
            log.error("nbd: the final sync failed: %s", e)
        log.info("NBD server %s stopped", self.address)


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (port 0: any free port, for tests); the NBD port 10809 if none is given."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(P.DEFAULT_PORT)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"invalid NBD address {text!r}: use HOST:PORT, like 0.0.0.0:{P.DEFAULT_PORT}")
    return host, int(port)
