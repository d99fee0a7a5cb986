"""The daemon survives its own failures, and the CLI reports them in one line (issue #22).

* A failed array (injected journal write error) stops with ``array stop``, says so, and
  ``pool check`` runs afterwards.
* A failure injected at each start-up step (fault points ``daemon.start.<step>``) leaves
  nothing behind: no thread, descriptor or frozen GC state in-process; no daemon process,
  FUSE mount or control socket, and a free pool lock, from the CLI.
* A closed stdout ends a command quietly; a daemon that drops or garbles the connection is
  one ``vstor: error:`` line naming POOL/log/daemon.log.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from harness import VSTOR, Array, _wait_gone, one_error_line, run

from vstor.control.daemon import START_STEPS, Reporter
from vstor.control.daemon import run as daemon_run
from vstor.control.host.lock import PoolLock, daemon_pid
from vstor.control.host.mounts import fuse_mounted
from vstor.control.protocol import call
from vstor.control.server import ControlServer
from vstor.errors import VstorError
from vstor.faults import Faults
from vstor.store.superblock import layout


def _assert_released(arr: Array) -> None:
    """No daemon holds the pool, nothing is mounted, no control socket is left."""
    assert daemon_pid(arr.pool) is None, "the pool lock is still held"
    assert not fuse_mounted(arr.mnt), f"{arr.mnt} is still mounted"
    assert not os.path.exists(layout(arr.pool)["socket"]), "the control socket is left behind"


def _error_lines(arr: Array) -> list[str]:
    """The ERROR records of daemon.log (the line after each, if any, is the traceback's record)."""
    with open(os.path.join(layout(arr.pool)["log"], "daemon.log")) as f:
        return [line.rstrip("\n") for line in f if " ERROR " in line]


# -- a failed array ---------------------------------------------------------------------------
@pytest.mark.root
def test_a_failed_array_stops_and_can_be_checked(array_factory):
    arr = array_factory("failed")
    arr.start(env=dict(arr.env, VSTOR_FAULTS="journal.write=eio@1"))
    line = one_error_line(arr.vstor("volume", "create", "v", "--size", "16M", check=False), "write on failure")
    assert "injected EIO at journal.write" in line
    assert arr.status()["journal"]["failed"]
    pid = daemon_pid(arr.pool)
    line = one_error_line(arr.vstor("array", "stop", check=False), "stop a failed array")
    assert "the array had failed" in line and f"vstor pool check {arr.pool}" in line, line
    _wait_gone(pid)
    _assert_released(arr)
    assert any("the journal had failed" in e for e in _error_lines(arr))
    check = arr.vstor("pool", "check", arr.pool, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    arr.start()  # and it starts again, clean
    arr.create("v", "16M")
    assert arr.status()["journal"]["failed"] is None
    arr.stop()


# -- start-up failures ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from vstor.replication.pki import init_ca, issue

    d = str(tmp_path_factory.mktemp("pki"))
    init_ca(d)
    issue(d, "a")
    return d


def _settled(baseline: set[threading.Thread], timeout: float = 5.0) -> set[threading.Thread]:
    """Threads beyond ``baseline`` once short-lived helpers (the unmount thread) have ended."""
    deadline = time.monotonic() + timeout
    while True:
        extra = set(threading.enumerate()) - baseline
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.02)


@pytest.mark.root
@pytest.mark.parametrize("step", START_STEPS)
def test_a_start_up_failure_in_process_leaves_nothing(array_factory, tls_dir, step):
    """run() in this process, with replication and NBD listening so that their steps start threads."""
    arr = array_factory("inproc")
    repl = {"listen": f"127.0.0.1:{_free_port()}", "tls_dir": tls_dir, "name": "a"}
    threads, fds = set(threading.enumerate()), set(os.listdir("/proc/self/fd"))
    reporter = Reporter(None)
    with pytest.raises(RuntimeError, match=f"injected bug at daemon.start.{step}$"):
        daemon_run(arr.pool, arr.mnt, None, reporter, repl=repl, faults=Faults(f"daemon.start.{step}=bug"),
                   nbd={"address": "127.0.0.1:0"})
    assert not reporter.sent  # READY never went out
    assert not _settled(threads), f"threads left: {_settled(threads)}"
    assert set(os.listdir("/proc/self/fd")) <= fds, "descriptors left open"
    assert gc.get_freeze_count() == 0, "the GC policy left objects frozen"
    _assert_released(arr)


@pytest.mark.root
@pytest.mark.parametrize("step", [START_STEPS[0], "backup", START_STEPS[-1]])  # every step: the in-process test
def test_a_start_up_failure_is_one_line_and_the_next_start_works(array_factory, step):
    arr = array_factory("cli")
    r = arr.start(check=False, env=dict(arr.env, VSTOR_FAULTS=f"daemon.start.{step}=bug"))
    line = one_error_line(r, f"start failing at {step}")
    assert f"injected bug at daemon.start.{step}" in line and "daemon.log" in line, line
    with open(layout(arr.pool)["lock"]) as f:  # the pid the failed daemon wrote when it took the lock
        _wait_gone(int(f.read().split()[0]), timeout=10)
    _assert_released(arr)
    assert _error_lines(arr)[-1].endswith(f"start-up failed: RuntimeError: injected bug at daemon.start.{step}")
    arr.start()
    arr.stop()


# -- the CLI's output -------------------------------------------------------------------------
@pytest.mark.root
def test_a_closed_stdout_ends_quietly(array):
    array.create("v", "16M")
    out = run(["bash", "-c", f"'{VSTOR}' volume list --json | head -c1; echo \" ${{PIPESTATUS[0]}}\""],
              env=array.env)
    assert out.stderr == ""
    head, status = out.stdout.split(" ")
    assert head == "[" and int(status) == 0, out.stdout
    r, w = os.pipe()  # a reader that left before the first write: the write must fail, deterministically
    os.close(r)
    try:
        p = subprocess.run([VSTOR, "volume", "list", "--json"], stdout=w, stderr=subprocess.PIPE, text=True,
                           env=array.env, timeout=60)
    finally:
        os.close(w)
    assert (p.returncode, p.stderr) == (0, "")


def _fake_daemon(pool: str, answer: bytes | None) -> threading.Thread:
    """A control socket that accepts one connection and closes it: at once (``None``, so the
    client's request is unread and its read fails with a reset) or after reading the request
    and sending ``answer``."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(layout(pool)["socket"])
    srv.listen(1)

    def serve() -> None:
        with srv:
            conn, _ = srv.accept()
            with conn:
                if answer is not None:
                    conn.recv(65536)
                    conn.sendall(answer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize(("answer", "expect"), [
    (None, "the array daemon closed the connection (it may have stopped or crashed); see {log}"),
    (b"", "the array daemon closed the connection (it may have stopped or crashed); see {log}"),
    (b"<html>\n", "the array daemon sent a reply that is not JSON; see {log}"),
    (b'{"ok": false, "error": "boom"}\n', "internal error AttributeError"),
])
def test_a_dropped_or_garbled_connection_is_one_line(tmp_path: Path, answer, expect):
    pool = str(tmp_path / "pool")
    run([VSTOR, "pool", "init", pool])
    log = os.path.join(pool, "log", "daemon.log")
    with PoolLock(pool):  # this process stands in for the daemon
        t = _fake_daemon(pool, answer)
        try:
            r = run([VSTOR, "volume", "list", "--pool", pool], check=False)
        finally:
            with socket.socket(socket.AF_UNIX) as s:  # unblock accept if the CLI never connected
                s.connect_ex(layout(pool)["socket"])
            t.join(10)
            os.unlink(layout(pool)["socket"])
    line = one_error_line(r, "a dropped control connection")
    assert expect.format(log=log) in line, line


def test_a_failing_request_handler_logs_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    class Broken:
        def dispatch(self, op: str, args: dict, progress: object = None) -> None:
            raise RuntimeError("handler bug")

    path = str(tmp_path / "control.sock")
    server = ControlServer(path, Broken())  # type: ignore[arg-type]
    server.start()
    try:
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(VstorError, match="internal error: RuntimeError: handler bug"):
                call(path, "status")
    finally:
        server.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == ["control request status failed: RuntimeError: handler bug"]
    assert errors[0].exc_info is None  # the traceback is a separate debug record
    assert any(r.name == "vstor.trace" and r.exc_info for r in caplog.records)
    assert not os.path.exists(path)
