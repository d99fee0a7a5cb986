"""Hold off the VM's free page reporting while a benchmark runs.

On a VM whose balloon device reports free pages (virtio-balloon free page reporting, as on
this project's firecracker machines), memory that stays free for a couple of seconds is handed
back to the host. The next use of each such page faults on the host. A cold sequential read
of 2 GiB then ran at 705-757 MB/s with 2.5-2.7 s of kernel time when it started 5 s after
`drop_caches`, against 1,870-2,084 MB/s and 0.3-0.4 s when it started at once (same file,
same code; docs/benchmarks.md, "Free page reporting"). Which target of a comparison pays
that depends on timing, so it made ratios swing by 0.4 between rounds and sittings.

``steady_memory`` raises ``page_reporting_order`` above the largest buddy order, so that no
free block is large enough to report, touches most of the free memory once so that pages
reported earlier are backed again, and restores the setting on exit (also after Ctrl-C or
SIGTERM, which the benchmarks turn into exceptions). After a kill -9 the setting stays; the
benchmark's header prints the command that restores it.

A hold nests: when the order is already above the largest buddy order (an outer hold, such as
``tools/steady_memory.py`` around all of ``make bench``), ``steady_memory`` neither touches
memory again nor changes the setting, and the outer hold restores it.
"""

from __future__ import annotations

import contextlib
import mmap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ORDER_PARAM = Path("/sys/module/page_reporting/parameters/page_reporting_order")
CHUNK = 1 << 20
HEADROOM = 2 << 30  # memory left untouched by the warm-up


def max_order() -> int:
    """The largest buddy order of this kernel (columns of /proc/buddyinfo, minus one)."""
    for line in Path("/proc/buddyinfo").read_text().splitlines():
        fields = line.split()
        if "zone" in fields:
            return len(fields) - fields.index("zone") - 3
    raise RuntimeError("cannot read /proc/buddyinfo")


def mem_free() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemFree:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read MemFree from /proc/meminfo")


def touch_free_memory(headroom: int = HEADROOM) -> tuple[int, float]:
    """Write to all free memory but ``headroom`` once, then free it. Returns (bytes, seconds)."""
    n = (max(0, mem_free() - headroom) // CHUNK) * CHUNK
    t0 = time.monotonic()
    if n:
        ones = b"\1" * CHUNK
        with mmap.mmap(-1, n) as m:
            for at in range(0, n, CHUNK):
                m[at : at + CHUNK] = ones
    return n, time.monotonic() - t0


@contextlib.contextmanager
def steady_memory(enabled: bool = True, param: Path = ORDER_PARAM, top_order: Callable[[], int] = max_order,
                  touch: Callable[[], tuple[int, float]] = touch_free_memory) -> Iterator[str]:
    """For the duration: no free page reporting, and free memory backed by the host. Yields a
    one-line description for the benchmark's header. Guarantee: if this call changed the
    setting, the old value is written back when the block exits, however it exits (short of
    kill -9). ``param``, ``top_order`` and ``touch`` are for tests."""
    if not enabled:
        yield "free page reporting: left as the machine has it (--keep-page-reporting)"
        return
    try:
        old = param.read_text().strip()
        new = top_order() + 1
        nested = int(old) >= new
        if not nested:
            param.write_text(f"{new}\n")
    except (OSError, ValueError) as e:
        problem = f"{param}: {getattr(e, 'strerror', None) or e}"
    else:
        problem = ""
    if problem or nested:  # the yield stays outside the try: the caller's errors are not ours
        yield (f"free page reporting: not held off ({problem})" if problem else
               f"free page reporting: held off already ({param.name} {old}, set by the caller)")
        return
    try:
        n, secs = touch()
        yield (f"free page reporting: held off for the run ({param.name} {old} -> {new}; "
               f"{n >> 30} GiB of free memory touched in {secs:.1f} s; after a kill -9 restore it with "
               f"'echo {old} > {param}')")
    finally:
        param.write_text(f"{old}\n")
