"""The daemon's heap policy (vstor/control/mallocpolicy.py): glibc takes both thresholds. What
it buys is measured by tools/bench_tape.py (FUSE reads of a drive file, docs/benchmarks.md §15);
a synthetic allocation loop did not reproduce the heap-top trimming, so no timing is tested."""

from __future__ import annotations

import subprocess
import sys


def test_glibc_takes_both_thresholds() -> None:
    out = subprocess.run([sys.executable, "-c", "from vstor.control.mallocpolicy import keep_heap; "
                          "print(keep_heap())"], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["True"]
