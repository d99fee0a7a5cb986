"""No network peer can exhaust the daemon (issue #22).

In-process: a Listener on loopback with a small cap and a manual clock. Connections that
never handshake are capped (the extra ones closed at once), dropped at the handshake
deadline, and a legitimate array still gets in afterwards; a failed thread start or a bug in
the accept loop is logged and the listener goes on; a dead listener says so. A malformed
HELLO from an authorized peer gets a REFUSE and one log line; a deeply nested control
request gets one clear error and the server goes on.

Root: a real daemon under ``prlimit --nofile=256`` flooded with 300 idle connections keeps
writing through its FUSE mount, and ``array status`` stays true about the listener.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from vstor import boundedjson
from vstor.clock import ManualClock
from vstor.control.protocol import call, decode_request
from vstor.errors import UsageError
from vstor.faults import Faults
from vstor.replication import wire
from vstor.replication.listener import Listener, pending_cap
from vstor.replication.pki import init_ca, issue
from vstor.replication.target import Session
from vstor.replication.transport import Conn, connect

NESTED = b"[" * 100_000 + b"]" * 100_000


def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_by_peer(s: socket.socket) -> bool:
    """True when the server closed ``s`` (EOF or reset) within a few seconds."""
    s.settimeout(5)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def tls(tmp_path: Path) -> str:
    d = str(tmp_path / "pki")
    init_ca(d)
    issue(d, "site-a")
    issue(d, "site-b")
    return d


@pytest.fixture
def listen(tls: str) -> Iterator[Callable[..., Listener]]:
    """Start Listeners as site-b on loopback; all are stopped after the test."""
    made: list[Listener] = []

    def make(handle: Callable, **kw: object) -> Listener:
        li = Listener(f"127.0.0.1:{free_port()}", tls, "site-b", handle, **kw)
        made.append(li)
        li.start()
        return li

    yield make
    for li in made:
        li.stop()
        li._thread.join(10)


def test_pending_cap_is_small_and_a_fraction_of_nofile() -> None:
    import resource

    assert pending_cap(16, 1024) == 16
    assert pending_cap(16, 256) == 16
    assert pending_cap(16, 64) == 4
    assert pending_cap(16, 8) == 1
    assert pending_cap(16, resource.RLIM_INFINITY) == 16


def test_throttle_logs_a_burst_then_counts(caplog) -> None:
    from vstor.replication.listener import Throttle

    caplog.set_level(logging.WARNING, logger="vstor.replication")
    clock = ManualClock()
    t = Throttle(clock, interval=10.0, burst=2)
    for i in range(5):
        t.warn("event %d", i)
    clock.advance(10.0)
    t.warn("event %d", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "event 0", "event 1", "event 5 (3 more like this were not logged)"]


def test_idle_connections_are_capped_then_dropped_at_the_deadline(listen, tls) -> None:
    clock = ManualClock()
    got: list[tuple[str, int]] = []
    arrived = threading.Event()

    def handle(conn: Conn, first: tuple[int, bytes]) -> None:
        got.append((conn.peer_name, first[0]))
        arrived.set()

    li = listen(handle, clock=clock, cap=4, handshake_timeout=5.0)
    idle: list[socket.socket] = []
    try:
        for _ in range(4):
            idle.append(socket.create_connection(("127.0.0.1", int(li.address.rsplit(":", 1)[1])), timeout=5))
        until(lambda: li.describe()["pending"] == 4, "4 connections are pending")
        extra = [socket.create_connection(("127.0.0.1", int(li.address.rsplit(":", 1)[1])), timeout=5)
                 for _ in range(6)]
        idle += extra
        assert all(closed_by_peer(s) for s in extra), "a connection over the cap was kept"
        until(lambda: li.describe()["rejected_busy"] == 6, "6 connections are refused over the cap")
        assert li.describe()["pending"] == 4

        clock.advance(4.9)
        assert li.reap() == 0  # before the deadline nothing is dropped
        clock.advance(0.2)
        assert li.reap() == 4
        until(lambda: li.describe()["pending"] == 0, "the overdue handshakes are dropped")
        assert all(closed_by_peer(s) for s in idle[:4])
        d = li.describe()
        assert (d["state"], d["handshake_timeouts"], d["accepted"]) == ("serving", 4, 4)

        conn = connect(li.address, tls, "site-a")  # a real array still gets in
        try:
            conn.send(wire.PING)
            assert arrived.wait(10)
        finally:
            conn.close()
        assert got == [("site-a", wire.PING)]
    finally:
        for s in idle:
            s.close()


def test_failed_thread_start_and_accept_bug_are_logged_and_serving_goes_on(listen, tls, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="vstor.replication")
    failures = [RuntimeError("can't start new thread")]

    def thread_factory(**kw: object) -> threading.Thread:
        if failures:
            raise failures.pop()
        return threading.Thread(**kw)  # type: ignore[arg-type]

    arrived = threading.Event()
    li = listen(lambda conn, first: arrived.set(), thread_factory=thread_factory, faults=Faults("repl.accept=bug@1"))
    with pytest.raises((OSError, ConnectionError)):  # the first connection: closed, no thread for it
        connect(li.address, tls, "site-a").recv()
    conn = connect(li.address, tls, "site-a")
    try:
        conn.send(wire.PING)
        assert arrived.wait(10), "the listener stopped after a failed thread start"
    finally:
        conn.close()
    d = li.describe()
    assert (d["state"], d["thread_failures"]) == ("serving", 1)
    text = caplog.text
    assert "cannot start a thread for a connection from 127.0.0.1" in text
    assert "injected bug at repl.accept" in text and "still listening" in text


def test_a_dead_listener_is_down_in_status(listen, monkeypatch) -> None:
    from vstor.replication.manager import Replication

    li = listen(lambda conn, first: None)
    assert li.describe()["state"] == "serving"

    def die() -> None:
        raise SystemExit("simulated death of the listener thread")

    monkeypatch.setattr(li, "_serve_once", die)
    li._thread.join(10)
    d = li.describe()
    assert d["state"] == "down: SystemExit: simulated death of the listener thread"
    mgr = SimpleNamespace(name="site-b", listener=li)
    assert Replication.endpoint(mgr) == {"name": "site-b", "listen": None, "listener": d}  # type: ignore[arg-type]


GOOD_HELLO = {"peer_group": "g", "group_at_primary": "g", "role": "primary", "generation": 1, "history": [[1, 0]],
              "state": "COPY", "key_check": "", "volumes": [{"id": 1, "name": "v", "size": 4096}],
              "array": "site-a", "victim": False}


@pytest.mark.parametrize("hello, reason", [
    ({**GOOD_HELLO, "generation": "abc"}, "generation must be an integer, not 'abc'"),
    ({k: v for k, v in GOOD_HELLO.items() if k != "volumes"}, "missing volumes"),
    ({**GOOD_HELLO, "volumes": [{"id": 1, "name": "v", "size": "big"}]}, "volumes[0].size must be an integer"),
    ({**GOOD_HELLO, "history": "x"}, "history must be a list"),
    ({**GOOD_HELLO, "history": [[1, "0"]]}, "history must be a list of [generation, seq] pairs"),
    ({**GOOD_HELLO, "victim": "yes", "generation": True}, "generation must be an integer, not True; victim must"),
    (json.loads("[" * 40 + "]" * 40), "nested too deeply"),
])
def test_malformed_hello_is_refused_and_logged(listen, tls, caplog, hello, reason) -> None:
    caplog.set_level(logging.INFO, logger="vstor.replication")
    mgr = SimpleNamespace(store=SimpleNamespace(key_check=""), sessions={})
    ended = threading.Event()

    def handle(conn: Conn, first: tuple[int, bytes]) -> None:
        try:
            Session(mgr, conn).run(first)
        finally:
            ended.set()

    li = listen(handle)
    conn = connect(li.address, tls, "site-a")
    try:
        conn.send_json(wire.HELLO, hello) if isinstance(hello, dict) else conn.send(wire.HELLO, json.dumps(hello)
                                                                                        .encode())
        ftype, body = conn.recv()
    finally:
        conn.close()
    assert ended.wait(10)
    assert ftype == wire.REFUSE
    assert reason in wire.parse_json(body)["reason"]
    lines = [r for r in caplog.records if "malformed HELLO" in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0].getMessage() and not lines[0].exc_info
    assert "Traceback" not in caplog.text


def test_nested_json_is_one_clear_error() -> None:
    with pytest.raises(UsageError, match=r"^control request is nested too deeply \(more than 32 levels\)$"):
        decode_request(NESTED)
    with pytest.raises(UsageError, match="nested too deeply"):
        decode_request(json.dumps({"v": 1, "op": "status", "args": {"a": json.loads("[" * 40 + "]" * 40)}}).encode())
    assert decode_request(b'{"v": 1, "op": "status", "args": {"a": [[1]]}}') == ("status", {"a": [[1]]}, False)
    assert boundedjson.depth({"a": [1, {"b": []}]}) == 4 and boundedjson.depth(5) == 0
    with pytest.raises(wire.BadFrame, match="nested too deeply"):
        wire.parse_json(NESTED)


def test_control_server_answers_a_nested_request_and_keeps_serving(tmp_path: Path) -> None:
    from vstor.control.server import ControlServer

    service = SimpleNamespace(dispatch=lambda op, args, progress=None: {"op": op})
    path = str(tmp_path / "control.sock")
    server = ControlServer(path, service)  # type: ignore[arg-type]
    server.start()
    try:
        reply = control_roundtrip(path, NESTED + b"\n")
        assert reply == {"ok": False, "error": {"type": "UsageError", "message":
                                                "control request is nested too deeply (more than 32 levels)"}}
        assert call(path, "status", timeout=10) == {"op": "status"}
    finally:
        server.stop()


def control_roundtrip(path: str, line: bytes) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(line)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            assert chunk, "the control server closed the connection without an answer"
            buf += chunk
    assert buf.count(b"\n") == 1
    return json.loads(buf)


# -- a real daemon ---------------------------------------------------------------------------------

def start_limited(arr, tls: str, port: int) -> None:  # noqa: ANN001
    """Start ``arr`` listening on 127.0.0.1:``port`` with at most 256 descriptors."""
    from harness import VSTOR, run

    run(["prlimit", "--nofile=256", VSTOR, "array", "start", "--mount", arr.mnt, "--listen", f"127.0.0.1:{port}",
         "--tls-dir", tls, "--name", "site-b"], env=arr.env)


@pytest.mark.root
def test_flood_of_idle_connections_cannot_stop_local_writes(array_factory, tls) -> None:
    from harness import read_direct

    arr = array_factory()
    port = free_port()
    start_limited(arr, tls, port)
    arr.create("v", "16M")
    pid = arr.status()["pid"]
    idle: list[socket.socket] = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        until(lambda: arr.status()["replication"]["listener"]["rejected_busy"] >= 300 - 16,
              "the connections over the cap are refused", 30)
        li = arr.status()["replication"]["listener"]
        assert li["state"] == "serving" and li["pending"] <= li["pending_cap"] == 16, li
        assert len(os.listdir(f"/proc/{pid}/fd")) < 128  # the peers hold few of the 256 descriptors

        data = os.urandom(1 << 20)
        fd = os.open(arr.image("v"), os.O_WRONLY)
        try:
            for i in range(8):
                assert os.pwrite(fd, data, i << 20) == len(data)
            os.fsync(fd)
        finally:
            os.close(fd)
        call(os.path.join(arr.pool, "control.sock"), "sync", timeout=30)
        assert read_direct(arr.image("v"), 7 << 20, 1 << 20) == data
        st = arr.status()
        assert not st["journal"]["failed"]
        assert st["replication"]["listen"] == f"127.0.0.1:{port}"

        until(lambda: arr.status()["replication"]["listener"]["pending"] == 0, "the idle handshakes time out", 30)
        assert arr.status()["replication"]["listener"]["handshake_timeouts"] >= 1
    finally:
        for s in idle:
            s.close()
    conn = connect(f"127.0.0.1:{port}", tls, "site-a")  # an array still gets an answer afterwards
    try:
        conn.send_json(wire.HELLO, {**GOOD_HELLO, "generation": "abc"})
        ftype, body = conn.recv()
    finally:
        conn.close()
    assert ftype == wire.REFUSE and "generation must be an integer" in wire.parse_json(body)["reason"]
    text = arr.vstor("array", "status").stdout
    assert f"replication listening on 127.0.0.1:{port}" in text
    log = Path(arr.pool, "log", "daemon.log").read_text()
    assert "malformed HELLO: generation must be an integer" in log
    assert 1 <= log.count("are already in their handshake") <= 5  # counted, and rate-limited
    assert "Traceback" not in log


@pytest.mark.root
def test_daemon_answers_a_nested_control_request_and_keeps_serving(array) -> None:
    sock = os.path.join(array.pool, "control.sock")
    reply = control_roundtrip(sock, NESTED + b"\n")
    assert reply["ok"] is False and reply["error"]["message"] == \
        "control request is nested too deeply (more than 32 levels)"
    assert array.status()["pid"]
    r = subprocess.run(["grep", "-c", "Traceback", os.path.join(array.pool, "log", "daemon.log")],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "0"
