"""Closing a TLS connection that another thread still reads (replication and backup clients).

``ssl.SSLSocket.shutdown`` drops the TLS state before the TCP shutdown, so a reader that comes
in between got the raw ciphertext queued in the kernel as if it were plaintext: a backup job
once failed with "not a vstor backup client frame (magic b',k\\x95r')" that way. transport.close_tls
shuts TCP down under the TLS state instead: the reader gets the real bytes, an end of stream or an
error, never ciphertext.
"""

from __future__ import annotations

import select
import socket
import threading

import pytest

from vstor.replication import pki, transport

FRAME = b"VSTR" + bytes(range(256)) * 64  # what the peer sends: 16 KiB and a bit


@pytest.fixture
def tls_pair(tmp_path):
    d = str(tmp_path)
    pki.init_ca(d)
    pki.issue(d, "a")
    pki.issue(d, "b")
    lsock = socket.create_server(("127.0.0.1", 0))
    server: list[socket.socket] = []

    def accept() -> None:
        raw, _ = lsock.accept()
        server.append(pki.tls_context(d, "a", server=True).wrap_socket(raw, server_side=True))

    t = threading.Thread(target=accept)
    t.start()
    client = transport.open_tls(f"127.0.0.1:{lsock.getsockname()[1]}", d, "b", timeout=5.0)
    t.join(5)
    try:
        yield server[0], client
    finally:
        for s in (server[0], client):
            s.close()
        lsock.close()


def _read_after_close(reader: socket.socket) -> bytes:
    """What a reader gets when it reads in the gap between the shutdown and the close."""
    reader.close = lambda: None  # type: ignore[method-assign]  # hold the gap open: shut down, not closed
    transport.close_tls(reader)
    got = bytearray()
    try:
        while len(got) < len(FRAME):
            buf = bytearray(1 << 16)
            n = reader.recv_into(buf)
            if not n:
                break
            got += buf[:n]
    except OSError:  # an SSL end-of-stream error is an acceptable outcome
        pass
    finally:
        del reader.close
    return bytes(got)


def test_a_reader_in_the_closing_gap_never_gets_ciphertext(tls_pair):
    server, client = tls_pair
    server.sendall(FRAME)
    assert select.select([client], [], [], 5)[0], "the peer's bytes did not arrive"
    got = _read_after_close(client)
    assert FRAME.startswith(got), f"read {len(got)} bytes that are not what the peer sent: {got[:8]!r}"


def test_conn_close_ends_a_blocked_reader_with_an_error(tls_pair):
    server, client = tls_pair
    conn = transport.Conn(client, "a")
    errors: list[BaseException] = []

    def read() -> None:
        try:
            conn.recv()
        except BaseException as e:  # noqa: BLE001 - kept for the assertion
            errors.append(e)

    t = threading.Thread(target=read)
    t.start()
    conn.close()
    t.join(5)
    assert not t.is_alive() and errors and isinstance(errors[0], OSError), errors
