"""The daemon's heap policy (vstor/control/host/mallocpolicy.py): with it, a freed request buffer is
reused from the heap; without it, glibc hands it back to the kernel and the next one is
faulted in anew. What that buys the daemon is measured by tools/bench_tape.py (FUSE reads of a
drive file, docs/benchmarks.md §15).

The buffers here are 40 MiB: above glibc's ceiling for its dynamic mmap threshold (32 MiB on
64-bit), so without the policy every one of them is mmapped and unmapped whatever happened
before, which makes the control run deterministic. The daemon's own buffers (256 KiB-1 MiB)
meet the same rule through heap trimming, which a short synthetic loop does not reproduce
reliably."""

from __future__ import annotations

import subprocess
import sys

BUFFER = 40 << 20
ROUNDS = 12
PAGES = BUFFER // 4096

_CHILD = f"""
import ctypes, ctypes.util, resource, sys
from vstor.control.host.mallocpolicy import keep_heap
took = keep_heap() if sys.argv[1] == "policy" else None
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({ROUNDS}):
    p = libc.malloc({BUFFER})
    ctypes.memset(p, 1, {BUFFER})  # touch every page, as a request's data does
    libc.free(p)
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True,
                         timeout=60).stdout.split()
    return out[0], int(out[1])


def test_freed_buffers_are_reused_with_the_policy_and_faulted_in_anew_without() -> None:
    took, with_policy = _faults("policy")
    assert took == "True"  # glibc took both thresholds
    _, without = _faults("none")
    assert without >= ROUNDS * PAGES * 0.9, f"the control run reused its buffers ({without} faults): nothing shown"
    assert with_policy <= 2 * PAGES, f"{with_policy} page faults for {ROUNDS} buffers: they were not reused"
