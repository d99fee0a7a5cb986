"""vstor pki: the CA and array certificates, and mutual TLS between two arrays."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import stat
import threading

import pytest

from vstor.errors import AlreadyExists, NotFound, UsageError
from vstor.replication.pki import init_ca, issue, peer_name, tls_context


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[str | None, str | None]:
    """TLS over a socket pair; returns (name the server saw, name the client saw), None on failure."""
    a, b = socket.socketpair()
    seen: dict[str, str | None] = {"server": None}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                seen["server"] = peer_name(s)
                s.sendall(b"ok")
        except (ssl.SSLError, OSError):
            seen["server"] = None

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b) as c:
            client_saw = peer_name(c)
            assert c.recv(2) == b"ok"
    except (ssl.SSLError, OSError):
        client_saw = None
    t.join(10)
    return seen["server"], client_saw


def test_mutual_tls_between_arrays_of_one_ca(tmp_path):
    d = str(tmp_path / "pki")
    init_ca(d)
    issue(d, "site-a")
    issue(d, "site-b")
    assert stat.S_IMODE(os.stat(os.path.join(d, "site-a.key")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(d, "ca.key")).st_mode) == 0o600
    assert _handshake(tls_context(d, "site-b", server=True), tls_context(d, "site-a", server=False)) == (
        "site-a", "site-b")


def test_certificates_of_another_ca_or_expired_are_refused(tmp_path):
    good, other = str(tmp_path / "good"), str(tmp_path / "other")
    init_ca(good)
    init_ca(other)
    issue(good, "site-b")
    issue(good, "site-a")
    issue(other, "site-a")  # the same name, from a CA the pair does not trust
    assert _handshake(tls_context(good, "site-b", server=True), tls_context(other, "site-a", server=False)) == (
        None, None)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    expired = str(tmp_path / "expired")
    init_ca(expired, now=old)
    issue(expired, "site-b", now=old, days=365)
    issue(expired, "site-a", now=old, days=1)  # expired 29 days ago
    assert _handshake(tls_context(expired, "site-b", server=True),
                      tls_context(expired, "site-a", server=False)) == (None, None)


def test_pki_refuses_overwrites_bad_names_and_missing_ca(tmp_path):
    d = str(tmp_path / "pki")
    init_ca(d)
    with pytest.raises(AlreadyExists):
        init_ca(d)
    issue(d, "site-a")
    with pytest.raises(AlreadyExists):
        issue(d, "site-a")
    for bad in ("", "ca", "../x", "a b"):
        with pytest.raises(UsageError):
            issue(d, bad)
    with pytest.raises(NotFound):
        issue(str(tmp_path / "none"), "site-a")
    with pytest.raises(NotFound, match=r"missing TLS file .*site-z\.pem;"):  # names the file it lacks
        tls_context(d, "site-z", server=True)
    os.remove(os.path.join(d, "site-a.key"))
    with pytest.raises(NotFound, match=r"missing TLS file .*site-a\.key;"):
        tls_context(d, "site-a", server=False)


def test_pki_cli(tmp_path):
    """vstor pki init / issue through the console script, and one-line errors."""
    import subprocess
    import sys

    vstor = os.path.join(os.path.dirname(sys.executable), "vstor")
    d = str(tmp_path / "pki")
    r = subprocess.run([vstor, "pki", "init", d], capture_output=True, text=True)
    assert r.returncode == 0 and os.path.exists(os.path.join(d, "ca.pem")), r.stderr
    r = subprocess.run([vstor, "pki", "issue", "site-a", "--dir", d, "--json"], capture_output=True, text=True)
    assert r.returncode == 0 and "site-a.pem" in r.stdout, r.stderr
    r = subprocess.run([vstor, "pki", "issue", "site-a", "--dir", d], capture_output=True, text=True)
    assert r.returncode == 4 and r.stderr.count("\n") == 1 and r.stderr.startswith("vstor: error:"), r.stderr
    r = subprocess.run([vstor, "pki", "issue", "x", "--dir", str(tmp_path / "none")], capture_output=True, text=True)
    assert r.returncode == 3 and "vstor pki init" in r.stderr, r.stderr


def test_listener_keeps_listening_after_a_failed_accept(tmp_path):
    """A failed accept (fault point repl.accept, as a peer resetting before it is taken
    would cause) is logged and the listener goes on: the next array still gets in. Before,
    any OSError from accept ended the listener thread and the DR site stopped taking
    connections while it kept running."""
    from vstor.faults import Faults
    from vstor.replication import wire
    from vstor.replication.listener import Listener
    from vstor.replication.transport import connect

    d = str(tmp_path / "pki")
    init_ca(d)
    issue(d, "site-a")
    issue(d, "site-b")
    with socket.socket() as probe:  # a free port on loopback (the listener refuses port 0)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    seen: list[str] = []
    arrived = threading.Event()

    def handle(conn, first) -> None:
        seen.append(conn.peer_name)
        arrived.set()

    listener = Listener(f"127.0.0.1:{port}", d, "site-b", handle, faults=Faults("repl.accept=eio@1"))
    listener.start()
    try:
        conn = connect(listener.address, d, "site-a")
        try:
            conn.send(wire.PING)  # the first frame ends the handshake
            assert arrived.wait(10), "the listener stopped after the failed accept"
        finally:
            conn.close()
        assert seen == ["site-a"]
        assert listener._thread.is_alive()
    finally:
        listener.stop()
        listener._thread.join(10)
    assert not listener._thread.is_alive()
