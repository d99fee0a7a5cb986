"""Keep a Python thread state for each of libfuse's worker threads.

libfuse's threads are not Python's: every request enters Python through a ctypes callback,
which calls ``PyGILState_Ensure`` and, when the thread has no thread state, creates one and
deletes it again when the callback returns. That is not free: each request allocated a
thread state, mapped and unmapped its frame stack (an ``munmap`` per request, a TLB flush on
every core the process runs on) and started with empty ``threading.local`` data. Measured on a
RADOS pool, 4 KiB O_DSYNC writes at QD16 (benchmarks.md §13): 4,532 and 5,102 IOPS with a
thread state per request, 5,234 and 5,646 with one per thread; 172-197 us of the daemon's CPU
per write against 150-167.

:func:`keep_thread_state` takes one more ``PyGILState_Ensure`` on the calling thread and never
releases it, so the callback's own release leaves the state in place for the thread's next
request. Guarantee: called from a callback (the GIL held), it changes nothing but the lifetime
of the thread's state, which lives until the interpreter ends (libfuse keeps its workers for
the whole session: vstor never sets max_idle_threads); a thread that never calls it is as
before.
"""

from __future__ import annotations

import ctypes
import threading

__all__ = ["keep_thread_state"]

_ensure = ctypes.pythonapi.PyGILState_Ensure
_ensure.restype = ctypes.c_int
_ensure.argtypes = []
_kept: set[int] = set()  # thread idents whose state is kept (only added to, under the GIL)


def keep_thread_state() -> bool:
    """Keep the calling thread's Python thread state past the current callback. True the
    first time on a thread (the state is now kept), False after."""
    ident = threading.get_ident()
    if ident in _kept:
        return False
    _kept.add(ident)
    _ensure()  # the matching PyGILState_Release is deliberately never called
    return True
