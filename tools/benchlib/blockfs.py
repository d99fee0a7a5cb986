"""ext4 on a loop device, for the benchmarks of real applications (pgbench, stress-ng; issue 25).

    loop   a loop device over a sparse file in the work directory: the baseline
    vstor  a loop device over a vstor volume's FUSE image (a fresh plain pool, as bench_fio's)
    passthrough  a loop device over tools/passthrough_fuse.py's image (bare Python FUSE over a
           sparse file): what FUSE and Python cost by themselves, without vstor's storage logic

Both loop devices use direct I/O (``losetup --direct-io=on``, what ``vstor volume attach``
does), so neither caches the data twice. Entering returns the mounted directory; leaving
unmounts, detaches and stops everything, also after an error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .hostmem import steady_memory
from .procs import BenchError, Staged, best_effort, install_signal_handlers, run, signals_deferred, wait_until
from .targets import Passthrough, Target, Vstor, make_sparse
from .vcpu import idle_polling

__all__ = ["KINDS", "Ext4Target", "loop_attach"]

KINDS = ("loop", "vstor", "passthrough")


def loop_attach(image: Path, stack: contextlib.ExitStack) -> str:
    """losetup --direct-io=on the image; its detach goes on the stack."""
    with signals_deferred():
        dev = run(["losetup", "--find", "--show", "--direct-io=on", str(image)]).stdout.strip()
        stack.callback(best_effort(f"detach {dev}", lambda: _detach(dev)))
    return dev


def _detach(dev: str) -> None:
    """losetup -d, then wait for the device to let go of its file (the kernel does it when the
    last user closes it), so that the volume is no longer open when the array stops."""
    run(["losetup", "-d", dev])
    backing = Path(f"/sys/block/{os.path.basename(dev)}/loop/backing_file")
    if not wait_until(lambda: not backing.exists(), 30):
        raise BenchError(f"{dev} still holds its file 30 s after losetup -d")


class Ext4Target(Staged[Path]):
    """A mounted ext4 of ``size`` bytes on a loop device over a file (``loop``) or a vstor volume."""

    def __init__(self, kind: str, workdir: Path, size: int) -> None:
        if kind not in KINDS:
            raise BenchError(f"unknown target {kind!r}: choose from {', '.join(KINDS)}")
        self.kind, self.size = kind, size
        self.dir = workdir / kind
        super().__init__()
        self.vstor: Vstor | None = None
        self.fuse: Target | None = None  # the FUSE target under the loop device, if any
        self.device = ""

    def setup(self) -> Path:
        if self.kind == "vstor":
            self.fuse = self.vstor = Vstor("vstor-plain", self.dir.parent, self.size, "plain")
            image = self.stack.enter_context(self.vstor)
        elif self.kind == "passthrough":
            self.fuse = Passthrough("passthrough", self.dir.parent, self.size)
            image = self.stack.enter_context(self.fuse)
        else:
            self.dir.mkdir()
            self.stack.callback(best_effort(f"remove {self.dir}", lambda: run(["rm", "-rf", str(self.dir)])))
            image = make_sparse(self.dir / "disk.img", self.size)
        self.device = loop_attach(image, self.stack)
        run(["mkfs.ext4", "-q", "-F", self.device], timeout=300)
        mnt = (self.fuse.dir if self.fuse else self.dir) / "fs"
        mnt.mkdir()
        with signals_deferred():
            run(["mount", self.device, str(mnt)])
            self.stack.callback(best_effort(f"unmount {mnt}", lambda: run(["umount", str(mnt)], timeout=300)))
        os.chmod(mnt, 0o755)
        return mnt

    def daemon_pid(self) -> int | None:
        return self.fuse.pid if self.fuse else None


def measure_each(kinds: list[str], workdir: Path, hold_memory: bool,
                 measure: Callable[[str], dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], bool]:
    """``measure(kind)`` for each target kind in turn, under the hold on free page reporting
    (hostmem.py) unless told not to; ``workdir`` is removed at the end, also after Ctrl-C.
    Returns the results so far and whether the run was interrupted."""
    results: dict[str, dict[str, Any]] = {}
    interrupted = False
    try:
        with steady_memory(hold_memory) as mem:
            print(mem, idle_polling(), sep="\n", flush=True)
            for kind in kinds:
                results[kind] = measure(kind)
    except KeyboardInterrupt as exc:
        interrupted = True
        print(f"\ninterrupted ({str(exc) or 'Ctrl-C'}): everything set up was undone", file=sys.stderr, flush=True)
    finally:
        with signals_deferred():
            shutil.rmtree(workdir, ignore_errors=True)
    return results, interrupted


def run_ext4_tool(tool: str, a: Any, commands: Sequence[str], what: str,
                  measure: Callable[[str, Path], dict[str, Any]],
                  prepare: Callable[[Path], None] | None = None) -> tuple[dict[str, dict[str, Any]], bool]:
    """The frame of a tool that measures an application on ext4 on each of ``a.target_list``
    (bench_pgbench, bench_stall, bench_commit): root and ``commands`` checked (one line and
    exit 1 if missing), signals handled, a work directory under ``a.workdir`` (``prepare``d,
    then removed), the command line and ``what`` printed, ``measure(kind, workdir)`` per
    target under the hold on free page reporting unless ``a.keep_page_reporting``."""
    if os.geteuid() != 0:
        raise SystemExit(f"{tool}: needs root (loop devices, mounts)")
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        raise SystemExit(f"{tool}: missing commands: {', '.join(missing)} (make setup)")
    install_signal_handlers()
    workdir = Path(tempfile.mkdtemp(prefix=f"vstor-{tool.removeprefix('bench_')}-", dir=a.workdir))
    if prepare is not None:
        prepare(workdir)
    print(f"$ {shlex.join(sys.orig_argv)}")
    print(f"{what}, in {workdir}", flush=True)
    results, interrupted = measure_each(a.target_list, workdir, not a.keep_page_reporting,
                                        lambda kind: measure(kind, workdir))
    print()
    return results, interrupted


def finish_ext4_tool(a: Any, doc: dict[str, Any], results: dict[str, dict[str, Any]], interrupted: bool) -> int:
    """Write ``doc`` with the command, results and interruption to ``a.json_out`` if asked;
    the exit status: 130 if interrupted, 1 if a target failed (a missed target is not a failure)."""
    if a.json_out:
        doc = {"command": shlex.join(sys.orig_argv), **doc, "results": results, "interrupted": interrupted}
        Path(a.json_out).write_text(json.dumps(doc, indent=2) + "\n")
    if interrupted:
        return 130
    return int(any(r["error"] for r in results.values()))
