"""Run a command with the VM's free page reporting held off (benchlib/hostmem.py).

    .venv/bin/python -m tools.steady_memory CMD [ARG...]

`make bench` runs all its tools under one hold, so the free memory is touched once (about a
minute here) rather than once per tool, and no tool's figures pay host faults on pages the
balloon took back between tools. Tools that hold it themselves (bench_fio, bench_read_pipeline)
see the hold and leave it to this wrapper.

The setting is restored when the command ends, and when this wrapper gets SIGTERM or SIGHUP
(passed on to the command first). Ctrl-C reaches the command from the terminal; the wrapper
ignores it and restores the setting once the command has exited. The exit status is the
command's (128+N if a signal N killed it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from types import FrameType

from tools.benchlib.hostmem import steady_memory


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0] + "\nusage: steady_memory.py CMD [ARG...]",
              file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    if os.geteuid() != 0:
        print("steady_memory: needs root (it writes a /sys/module parameter)", file=sys.stderr)
        return 2
    if shutil.which(argv[0]) is None:
        print(f"steady_memory: {argv[0]}: command not found", file=sys.stderr)
        return 127
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: FrameType | None) -> None:
        if child is None:  # still warming up: stop, and let steady_memory restore the setting
            raise SystemExit(128 + signum)
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    with steady_memory() as header:
        print(f"steady_memory: {header}", flush=True)
        # An ignored signal stays ignored across exec, so give the command Ctrl-C back.
        child = subprocess.Popen(argv, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        rc = child.wait()
    return 128 - rc if rc < 0 else rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
