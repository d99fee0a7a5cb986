"""Client protocol frames over mutually authenticated TLS: the thin socket adapter of wire.py.

The listening side is :class:`vstor.replication.listener.Listener` (bounded pending handshakes),
given :func:`array_conn` as its connection factory; the client side is :func:`connect`. The
peer's identity is the verified common name of its certificate (``pki.peer_name``).

Fault hooks: ``client.recv.tamper`` (action ``torn``) flips one byte of the next DATA payload
after it is received and opened, standing in for tampering TLS would otherwise catch, so the
array's own per-file checksums are what must catch it; ``client.send`` fires before each frame
(``eio``: the connection is cut).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time

from vstor.backup.client import wire
from vstor.faults import NO_FAULTS, Faults
from vstor.replication import pki
from vstor.replication.transport import close_tls, open_tls, recv_exact

FLUSH_AT = 256 << 10  # bytes of queued frames sent at once
READ_AHEAD = 256 << 10  # a frame part smaller than this is read with whatever else has arrived
DRAIN = 2.0  # seconds the array reads on after a REFUSE, so the client sees it
TIMEOUT = 30.0  # seconds without a frame before a connection is declared dead
TO_ARRAY, TO_CLIENT = 0, 1  # the sealing direction byte of each side's frames


class Conn:
    """One connection. ``direction`` is the direction of the frames this side sends."""

    def __init__(self, sock: ssl.SSLSocket, peer_name: str, faults: Faults = NO_FAULTS,
                 direction: int = TO_CLIENT) -> None:
        self.sock, self.peer_name, self.faults, self.direction = sock, peer_name, faults, direction
        self.key: bytes | None = None  # the client's key, once known: seals and opens file frames
        self._out = self._in = 0
        self._lock = threading.Lock()
        self.bytes_in = self.bytes_out = 0
        self._rbuf = bytearray()  # bytes read ahead (small frame parts, and looking for a REFUSE)
        self._wbuf = bytearray()  # small frames are sent together (a TLS record each would be slow)

    def send(self, ftype: int, payload: bytes = b"") -> None:
        with self._lock:
            self.faults.hit("client.send")
            frame = wire.pack(ftype, payload, self._out, self.key, self.direction)
            self._out += 1
            self.bytes_out += len(frame)
            self._wbuf += frame
            if len(self._wbuf) >= FLUSH_AT or ftype not in (wire.FILE, wire.DATA, wire.FEND):
                self._flush()

    def _flush(self) -> None:
        if self._wbuf:
            if self.direction == TO_ARRAY:
                self._check_refused()
            self.sock.sendall(self._wbuf)
            self._wbuf.clear()

    def _check_refused(self) -> None:
        """A sender looks for a REFUSE the array sent mid-stream (quota, checksum, media) before
        sending on, so it stops at once and says why."""
        if self._readable():
            ftype, body = self._recv()
            if ftype == wire.REFUSE:
                doc = wire.loads(body)
                raise Refused(doc.get("reason", "refused"), doc.get("code", "refused"))
            raise wire.BadFrame(f"{wire.NAMES[ftype]} frame from the array in the middle of the stream")

    def _readable(self) -> bool:
        """Whether application data from the peer waits (TLS 1.3 session tickets do not count)."""
        if self._rbuf or self.sock.pending():
            return True
        if not select.select([self.sock], [], [], 0)[0]:
            return False
        timeout = self.sock.gettimeout()
        self.sock.settimeout(0.0)
        try:
            chunk = self.sock.recv(1 << 16)
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        finally:
            self.sock.settimeout(timeout)
        if not chunk:
            raise ConnectionError(f"{self.peer_name} closed the connection")
        self._rbuf += chunk
        return True

    def refusal(self, timeout: float = 2.0) -> Refused | None:
        """After a failed send: the array's REFUSE, if it sent one before closing."""
        self._wbuf.clear()
        try:
            self.sock.settimeout(timeout)
            ftype, body = self._recv()
        except (OSError, wire.BadFrame):
            return None
        if ftype != wire.REFUSE:
            return None
        doc = wire.loads(body)
        return Refused(doc.get("reason", "refused"), doc.get("code", "refused"))

    def drain(self, seconds: float = DRAIN) -> None:
        """After a REFUSE: read and drop what the peer still sends, until it closes or ``seconds``
        pass, so the REFUSE is not lost to a reset (a bounded wait for the peer, not a timing)."""
        end = time.monotonic() + seconds
        with contextlib.suppress(OSError, ValueError):
            socket.socket.shutdown(self.sock, socket.SHUT_WR)
            self.sock.settimeout(0.2)
            while time.monotonic() < end:
                with contextlib.suppress(TimeoutError):
                    if not self.sock.recv(1 << 20):
                        return

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def send_json(self, ftype: int, obj: dict) -> None:
        self.send(ftype, wire.dumps(obj))

    def recv(self) -> tuple[int, bytes]:
        self.flush()
        return self._recv()

    def _recv(self) -> tuple[int, bytes]:
        head = self._exact(wire.HEADER.size)
        ftype, _flags, length = wire.parse_header(head, self._in)
        payload = self._exact(length)
        self._in += 1
        self.bytes_in += len(head) + length
        body = wire.unseal(head, payload, self.key, 1 - self.direction)
        if ftype == wire.DATA and body and self.faults.hit("client.recv.tamper") == "torn":
            body = bytes([body[0] ^ 0x01]) + body[1:]
        return ftype, body

    def recv_json(self, *want: int) -> tuple[int, dict]:
        """The next frame, which must be one of ``want`` and JSON. A REFUSE raises Refused."""
        ftype, body = self.recv()
        if ftype == wire.REFUSE and wire.REFUSE not in want:
            doc = wire.loads(body)
            raise Refused(doc.get("reason", "refused"), doc.get("code", "refused"))
        if ftype not in want:
            raise wire.BadFrame(f"{wire.NAMES[ftype]} frame where {'/'.join(wire.NAMES[w] for w in want)} was due")
        return ftype, wire.loads(body)

    def _exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes. A small part (a frame's header, a small file's frames) is taken
        from bytes read ahead, refilled with one ``recv`` of whatever has arrived (a TLS record
        up to 16 KiB): a small file is three frames, and reading each header and payload with a
        call of its own was a quarter of the array's time per file (docs/benchmarks.md section
        11). A large part is read into its own buffer, without the copy."""
        if n < READ_AHEAD:
            while len(self._rbuf) < n:
                chunk = self.sock.recv(READ_AHEAD)
                if not chunk:
                    break  # recv_exact says the peer closed
                self._rbuf += chunk
        return recv_exact(self.sock, n, self.peer_name, self._rbuf)  # read ahead first (also _readable's)

    def close(self) -> None:
        close_tls(self.sock)


class Refused(wire.BadFrame):
    """The peer refused (a REFUSE frame): ``code`` names the failure point."""

    def __init__(self, message: str, code: str = "refused") -> None:
        super().__init__(message)
        self.code = code


def array_conn(sock: ssl.SSLSocket, peer_name: str, faults: Faults = NO_FAULTS) -> Conn:
    """The array's end of an accepted connection (the Listener's factory)."""
    return Conn(sock, peer_name, faults, TO_CLIENT)


def connect(address: str, tls_dir: str, name: str, timeout: float = TIMEOUT, faults: Faults = NO_FAULTS) -> Conn:
    """A TLS connection to the array at ``address`` as client ``name``; raises OSError/ssl errors."""
    sock = open_tls(address, tls_dir, name, timeout)
    return Conn(sock, pki.peer_name(sock), faults, TO_ARRAY)
