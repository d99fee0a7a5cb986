"""Test harness: a real array (daemon, FUSE mount, loop devices) that always cleans up.

Every resource a test creates is recorded here and released in ``cleanup`` even when the
test fails: filesystems mounted on loop devices, loop devices over the images, the daemon
(``array stop``, then SIGKILL), and the FUSE mount (``fusermount3 -uz``).
"""

from __future__ import annotations

import contextlib
import io
import json
import mmap
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
VSTOR = str(VENV_BIN / "vstor")


def run(cmd: list[str], check: bool = True, env: dict | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(cmd)} -> {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}")
    return r


def one_error_line(r: subprocess.CompletedProcess, what: str) -> str:
    """Check that a command failed with exactly one 'vstor: error:' line and no traceback."""
    assert r.returncode != 0, f"{what}: expected failure, got exit 0\nstdout: {r.stdout}"
    assert "Traceback" not in r.stderr, f"{what}: traceback on stderr:\n{r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, f"{what}: expected one stderr line, got {lines!r}"
    assert lines[0].startswith("vstor: error:"), f"{what}: {lines[0]!r}"
    return lines[0]


def read_direct(path: str, offset: int = 0, size: int | None = None) -> bytes:
    """Read with O_DIRECT so the answer comes from the daemon, not the page cache."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        if size is None:
            size = os.fstat(fd).st_size - offset
        out = bytearray()
        buf = mmap.mmap(-1, (4 << 20))  # page-aligned buffer
        try:
            while len(out) < size:
                want = min((4 << 20), size - len(out))
                n = os.preadv(fd, [memoryview(buf)[:want]], offset + len(out))
                if n == 0:
                    break
                out += buf[:n]
        finally:
            buf.close()
        return bytes(out)
    finally:
        os.close(fd)


class Array:
    def __init__(self, base: Path, **init_opts: str) -> None:
        self.base = base
        self.pool = str(base / "pool")
        self.mnt = str(base / "mnt")
        self.env = dict(os.environ, VSTOR_POOL=self.pool)
        self.mounts: list[str] = []
        self.netns: str | None = None  # start the daemon in this network namespace
        self.start_args: list[str] = []
        self.key_file: str | None = init_opts.pop("key_file", None)
        args = ["pool", "init", self.pool]
        for k, v in init_opts.items():
            args += [f"--{k.replace('_', '-')}", v] if v is not True else [f"--{k.replace('_', '-')}"]
        if self.key_file:
            args += ["--key-file", self.key_file]
        _vstor_in_process(args)

    def vstor(self, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        return run([VSTOR, *args], check=check, env=env or self.env)

    def vstor_json(self, *args: str) -> object:
        return json.loads(self.vstor(*args, "--json").stdout)

    def start(self, check: bool = True, env: dict | None = None, key_file: str | None = None,
              args: list[str] | None = None) -> subprocess.CompletedProcess:
        """Start the daemon; in ``self.netns`` (a network namespace) if set, with extra ``args``."""
        extra = (["--key-file", key_file] if key_file else []) + (args or self.start_args)
        cmd = [VSTOR, "array", "start", "--mount", self.mnt, *extra]
        if self.netns:
            cmd = ["nsenter", f"--net=/run/netns/{self.netns}", *cmd]
        return run(cmd, check=check, env=env or self.env)

    def stop(self) -> None:
        self.vstor("array", "stop")

    def status(self) -> dict:
        return json.loads(self.vstor("array", "status", "--json").stdout)

    def pid(self) -> int | None:
        with contextlib.suppress(Exception):
            return self.status()["pid"]
        return None

    def image(self, name: str) -> str:
        return os.path.join(self.mnt, "volumes", name)

    def create(self, name: str, size: str) -> None:
        self.vstor("volume", "create", name, "--size", size)

    def attach(self, name: str) -> str:
        return self.vstor("volume", "attach", name).stdout.strip()

    def mount_fs(self, dev: str, target: Path, opts: str = "") -> str:
        target.mkdir(parents=True, exist_ok=True)
        run(["mount", *(["-o", opts] if opts else []), dev, str(target)])
        self.mounts.append(str(target))
        return str(target)

    def umount_fs(self, target: str) -> None:
        run(["umount", target])
        self.mounts.remove(target)

    def kill9(self) -> None:
        pid = _lock_pid(self.pool)  # the daemon holds the pool lock: no CLI round trip
        if not pid or pid < 0:
            pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)

    def cleanup(self) -> None:
        for target in reversed(self.mounts):
            subprocess.run(["fsfreeze", "-u", target], capture_output=True)  # in case a test left it frozen
            subprocess.run(["umount", "-l", target], capture_output=True)
        self.mounts.clear()
        for dev in _loops_under(self.mnt):
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        pid = _lock_pid(self.pool)
        if pid:
            try:  # in process: the command's own code, without a Python start-up
                _vstor_in_process(["array", "stop", "--pool", self.pool, "--timeout", "20"])
            except (AssertionError, SystemExit):
                pass
            if _lock_pid(self.pool):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid)
        from vstor.control.host.mounts import fuse_mounted

        if fuse_mounted(self.mnt):  # also a dead mount, which os.path.isdir cannot see
            subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True)


class _PerThread:
    """Stands in for sys.stdout or sys.stderr while threads capture: a thread that captures writes
    to its own buffer, every other thread to the stream that was there before."""

    def __init__(self, name: str, default: object) -> None:
        self.name, self.default = name, default
        self.local = threading.local()

    def __getattr__(self, attr: str) -> object:  # write, flush, fileno, encoding, ...
        buf = getattr(self.local, "buf", None)
        return getattr(self.default if buf is None else buf, attr)


_CAPTURE_LOCK = threading.Lock()
_CAPTURE: dict[str, _PerThread] = {}  # the installed stand-ins, while any thread captures
_CAPTURING = [0]


@contextlib.contextmanager
def captured(out: io.StringIO, err: io.StringIO) -> Iterator[None]:
    """Send this thread's sys.stdout/sys.stderr writes to OUT/ERR, leaving other threads' alone.
    contextlib.redirect_stdout swaps the process-wide stream: two threads using it at once (replkit
    tears both sites down at once) could restore each other's buffer, which then swallowed the rest
    of the program's output (a benchmark's results) and let it exit 0. Here sys.stdout and sys.stderr
    hold per-thread stand-ins while any thread captures; the last one out puts the streams back."""
    with _CAPTURE_LOCK:
        if not _CAPTURING[0]:
            _CAPTURE.update(stdout=_PerThread("stdout", sys.stdout), stderr=_PerThread("stderr", sys.stderr))
            sys.stdout, sys.stderr = _CAPTURE["stdout"], _CAPTURE["stderr"]
        _CAPTURING[0] += 1
        stdout, stderr = _CAPTURE["stdout"], _CAPTURE["stderr"]
    before = getattr(stdout.local, "buf", None), getattr(stderr.local, "buf", None)  # nested: the outer's
    stdout.local.buf, stderr.local.buf = out, err
    try:
        yield
    finally:
        with _CAPTURE_LOCK:
            stdout.local.buf, stderr.local.buf = before
            _CAPTURING[0] -= 1
            if not _CAPTURING[0]:
                for name, stand_in in _CAPTURE.items():
                    if getattr(sys, name) is stand_in:  # else someone replaced it since: theirs stays
                        setattr(sys, name, stand_in.default)
                _CAPTURE.clear()


def _vstor_in_process(args: list[str]) -> None:
    """Run a vstor command in this process: the same code as the command, without the start-up
    of a Python process (~0.1-0.2 s each). For what every test's array does around the test
    (``pool init``, and ``array stop`` at clean-up); the tests of a command run the real ``vstor``.
    Safe in threads (replkit stops both sites at once): see :func:`captured`."""
    from vstor.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with captured(out, err):
        code = main(args)
    if code:
        raise AssertionError(f"vstor {' '.join(args)} -> {code}\nstdout: {out.getvalue()}\nstderr: {err.getvalue()}")


def _lock_pid(pool: str) -> int | None:
    from vstor.control.host.lock import daemon_pid

    return daemon_pid(pool) if os.path.exists(pool) else None


def _wait_gone(pid: int, timeout: float = 30) -> None:
    """Wait until ``pid`` has exited. A zombie counts as gone: it has closed its descriptors
    (so released the pool lock and its FUSE connection) and only waits to be reaped, which
    some init processes do only every second or two."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    return
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return
        time.sleep(0.02)


def _loops_under(prefix: str) -> list[str]:
    out = subprocess.run(["losetup", "--list", "--json", "-O", "NAME,BACK-FILE"], capture_output=True, text=True)
    if out.returncode or not out.stdout.strip():
        return []
    devs = json.loads(out.stdout).get("loopdevices", [])
    return [d["name"] for d in devs if (d.get("back-file") or "").startswith(os.path.realpath(prefix))]
