"""Processes, mounts and cleanup for the benchmark: everything started is undone, even on error."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Generic, TypeVar

T = TypeVar("T")


class BenchError(RuntimeError):
    """A target could not be set up or measured."""


class Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP, turned into an exception so that finally blocks run."""


_MAIN_PID = os.getpid()


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _MAIN_PID:  # a fork()ed child (pyroute2 does its namespace work in them): just end
        os._exit(128 + signum)
    raise Terminated(f"signal {signum}")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt()


def install_signal_handlers() -> None:
    """SIGINT, SIGTERM and SIGHUP raise in this process, so that finally blocks undo everything. In a
    child that pyroute2 forked for vm/lab.py (and ends with SIGTERM) they only end it: with the handler
    inherited, such a child went on running the benchmark and tore down the lab being made."""
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    # SIGINT explicitly too: a shell starting us in the background would have left it ignored.
    signal.signal(signal.SIGINT, _interrupt)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_terminated)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM/SIGHUP while cleaning up, so a second Ctrl-C cannot leave mounts behind."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def warn(msg: str) -> None:
    print(f"  warning: {msg}", file=sys.stderr, flush=True)


def best_effort(what: str, fn: Callable[[], object]) -> Callable[[], None]:
    """Wrap a cleanup step: report its failure and let the following steps run."""

    def step() -> None:
        try:
            fn()
        except Exception as exc:  # cleanup must go on
            warn(f"cleanup: {what}: {exc}")

    return step


class Staged(Generic[T]):
    """A benchmark resource set up in steps, each undone by a callback on ``self.stack``: entering
    runs :meth:`setup` and, if any step fails (or a signal arrives), undoes the steps already done;
    leaving undoes them all, with signals held off so that a Ctrl-C cannot cut a cleanup short."""

    def __init__(self) -> None:
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> T:
        try:
            return self.setup()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with signals_deferred():
            self.stack.close()

    def setup(self) -> T:
        raise NotImplementedError


def run(cmd: Sequence[str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a short command, capturing its output; raise BenchError with its stderr on failure."""
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(cmd)}: no answer after {timeout:.0f}s") from exc
    if check and res.returncode != 0:
        why = res.stderr.strip() or res.stdout.strip()
        raise BenchError(f"{' '.join(cmd)} failed ({res.returncode}): {why}")
    return res


def spawn(cmd: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a server in its own session (a terminal Ctrl-C reaches only us; we stop it in order)."""
    with open(log, "ab") as out:
        return subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_process(proc: subprocess.Popen[bytes] | int, grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Send sig, wait up to grace seconds, then SIGKILL. Accepts a Popen or a bare pid."""
    pid = proc if isinstance(proc, int) else proc.pid
    if not alive(proc):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if wait_until(lambda: not alive(proc), grace):
        return
    warn(f"pid {pid} ignored signal {sig} for {grace:.0f}s: SIGKILL")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(proc), 5.0)


def alive(proc: subprocess.Popen[bytes] | int) -> bool:
    if isinstance(proc, subprocess.Popen):
        return proc.poll() is None
    try:
        os.kill(proc, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{proc}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def wait_until(cond: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def _unescape(field: str) -> str:
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(_unescape(line.split()[4]) == target for line in f)


def unmount(path: Path) -> None:
    """fusermount3 -u, retried while busy, then a lazy -uz as the last resort."""
    for _ in range(20):
        if not is_mounted(path):
            return
        if run(["fusermount3", "-u", str(path)], timeout=30, check=False).returncode == 0:
            return
        time.sleep(0.5)
    if is_mounted(path):
        warn(f"{path} still busy: lazy unmount")
        run(["fusermount3", "-uz", str(path)], timeout=30, check=False)


def drop_caches() -> None:
    """Write back and drop the page cache: both the FUSE file's and its backing file's."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class RssSampler:
    """Samples a process's VmRSS (KiB) every interval seconds in a thread, with monotonic times."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = self.stopped = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def stop(self) -> list[tuple[float, int]]:
        if not self.stopped:
            self.stopped = time.monotonic()
            self._stop.set()
            self._thread.join()
        return self.samples

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append((time.monotonic(), rss_kib(self.pid)))
            except (OSError, BenchError):
                return

    def slope_kib_per_byte(self, nbytes: int) -> float | None:
        """RSS growth per byte over the second half of a steady write of nbytes between start and stop
        (least squares; bytes assumed proportional to time), which leaves out the fixed start-up costs."""
        span = self.stopped - self.started
        pts = [((t - self.started) / span * nbytes, kib) for t, kib in self.samples
               if t - self.started >= span / 2]
        if len(pts) < 4:
            return None
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        var = sum((x - mx) ** 2 for x, _ in pts)
        return sum((x - mx) * (y - my) for x, y in pts) / var if var else None
