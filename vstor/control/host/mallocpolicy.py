"""Keep glibc from handing the daemon's heap back to the kernel after every large request.

Why: a FUSE read or write of 256 KiB-1 MiB allocates and frees a buffer of that size. With
glibc's defaults a free that leaves more than M_TRIM_THRESHOLD (128 KiB, raised dynamically)
free at the top of the heap shrinks the heap (``sbrk``/``madvise``), and the next request
faults fresh zeroed pages in again. Tape reads through the drive file ran at 0.34-0.82x of a
bare file write instead of 1.5x (docs/benchmarks.md §15); whether a heap top was pinned by
some long-lived object decided it, which is why removing an unrelated import (pyroute2) from
the daemon made tape reads three times slower.

What: at start the daemon sets M_TRIM_THRESHOLD and M_MMAP_THRESHOLD to ``THRESHOLD`` (which
also turns off glibc's dynamic adjustment of both), so request buffers are reused from the
heap. Cost: up to ``THRESHOLD`` of freed memory may stay resident. Not glibc (musl, or no
``mallopt``): nothing is done and :func:`keep_heap` says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["THRESHOLD", "keep_heap"]

THRESHOLD = 64 << 20
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_heap(threshold: int = THRESHOLD) -> bool:
    """Set both glibc thresholds; True if glibc took them."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, threshold)) and bool(mallopt(M_MMAP_THRESHOLD, threshold))
