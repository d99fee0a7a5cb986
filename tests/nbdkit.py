"""Helpers of the NBD tests: an in-process NBD server over a Store in tmp_path, libnbd from
Debian's python3-libnbd (built for /usr/bin/python3, importable from the venv's 3.11), and a
raw-socket client for the sequences libnbd refuses to send."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
from collections.abc import Iterator

from poolkit import make_pool

from vstor.nbd import proto as P
from vstor.nbd.catalog import ExportCatalog
from vstor.nbd.exportfile import ExportSpec
from vstor.nbd.server import NbdServer
from vstor.store.store import Store

MiB = 1 << 20
if "/usr/lib/python3/dist-packages" not in sys.path:
    sys.path.append("/usr/lib/python3/dist-packages")
try:
    import nbd  # noqa: F401  (python3-libnbd)
except ImportError:  # pragma: no cover - the tests that need it skip
    nbd = None


class Served:
    """A Store with volumes, and an NBD server exporting them, in this process."""

    def __init__(self, tmp_path, volumes: dict[str, int] | None = None, tls_dir: str | None = None,
                 **server_kw) -> None:
        self.pool = make_pool(tmp_path)
        self.store = Store.open(self.pool)
        self.in_use: dict[int, int] = {}
        for name, size in (volumes or {"vol": 64 * MiB}).items():
            self.store.create_volume(name, size)
        self.catalog = ExportCatalog(self.store, lambda: dict(self.in_use))
        self.tls_dir = tls_dir
        self.server_kw = server_kw
        self.server: NbdServer | None = None

    def export(self, name: str, volume: str | None = None, **kw) -> None:
        self.catalog.put(ExportSpec(name, "" if kw.get("snapshot") else (volume or name), **kw))

    def start(self) -> NbdServer:
        self.server = NbdServer("127.0.0.1:0", self.store, self.catalog, tls_dir=self.tls_dir, **self.server_kw)
        self.server.start()
        return self.server

    def written(self, size: int, name: str = "vol") -> tuple[int, bytes]:
        """Export volume ``name``, start the server, and write ``size`` random bytes (synced)
        at its start: (volume id, data)."""
        self.export(name)
        self.start()
        vid = self.store.volume(name).id
        data = os.urandom(size)
        self.store.write(vid, 0, data)
        self.store.sync()
        return vid, data

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def uri(self, export: str) -> str:
        return f"nbd://127.0.0.1:{self.port}/{export}"

    def close(self) -> None:
        if self.server is not None:
            self.server.stop(grace=1.0)
        self.store.close()


@contextlib.contextmanager
def served(tmp_path, **kw) -> Iterator[Served]:
    s = Served(tmp_path, **kw)
    try:
        yield s
    finally:
        s.close()


def handle(uri: str | None = None, structured: bool = True, meta: bool = True):
    """A libnbd handle, connected to ``uri`` if given."""
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    if uri:
        h.connect_uri(uri)
    return h


class Raw:
    """A raw client socket speaking fixed newstyle by hand."""

    def __init__(self, port: int, flags: int = P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES,
                 timeout: float = 5.0, rcvbuf: int = 0) -> None:
        self.s = socket.socket()
        if rcvbuf:  # before connecting, so the window the server sees is small from the start
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.settimeout(timeout)
        self.s.connect(("127.0.0.1", port))
        hello = self.recv(18)
        assert hello[:16] == struct.pack(">QQ", P.NBDMAGIC, P.IHAVEOPT)
        self.s.sendall(struct.pack(">I", flags))

    def recv(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.s.recv(n - len(out))
            if not chunk:
                raise EOFError(f"closed after {len(out)} of {n} bytes")
            out += chunk
        return out

    def option(self, opt: int, data: bytes = b"") -> list[tuple[int, bytes]]:
        """Send one option; return its replies (type, data) up to the final one."""
        self.s.sendall(P.option_request(opt, data))
        out = []
        while True:
            ropt, rtype, length = P.parse_option_reply(self.recv(20))
            assert ropt == opt
            out.append((rtype, self.recv(length)))
            if rtype in (P.REP_ACK,) or rtype & P.REP_FLAG_ERROR:
                return out

    def go(self, name: str, structured: bool = False) -> None:
        if structured:
            assert self.option(P.OPT_STRUCTURED_REPLY)[-1][0] == P.REP_ACK
        replies = self.option(P.OPT_GO, P.info_request(name))
        assert replies[-1][0] == P.REP_ACK, replies

    def simple(self, cmd: int, cookie: int, offset: int = 0, length: int = 0, flags: int = 0,
               data: bytes = b"") -> tuple[int, int]:
        """Send a request; return (error, cookie) of its simple reply (reads: data discarded)."""
        self.s.sendall(P.request(cmd, cookie, offset, length, flags) + data)
        magic, err, ck = P.SIMPLE_REPLY.unpack(self.recv(16))
        assert magic == P.SIMPLE_REPLY_MAGIC
        if cmd == P.CMD_READ and not err:
            self.recv(length)
        return err, ck

    def closed(self) -> bool:
        try:
            return self.s.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.s.close()
