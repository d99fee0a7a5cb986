"""Keep Python's cyclic garbage collector off the array's long-lived maps.

Why: chunk-map leaves, their overlay lists and the header cache are containers that the
cyclic collector tracks. A full (generation 2) collection walks every one of them with the
GIL held, and every FUSE request waits meanwhile. With 1,000 snapshots of an aged 1 GiB
volume, full passes took up to 490 ms, and the collector cost 28 µs per 4 KiB write against
6 µs with no snapshot: writes were 1.27 times slower (tools/bench_snapshot_gc.py,
docs/benchmarks.md §5). Under this policy the ratio was 0.98: flat.

What: those maps hold no reference cycles, so reference counting frees them and the
collector has nothing to find there. Every ``freeze_every`` seconds :meth:`GcPolicy.tick`
calls ``gc.freeze()``, which moves every object alive at that moment into the permanent
generation at O(1) cost; the collector then only walks objects younger than that.

Guarantee and cost: reference counting still frees frozen objects the moment they are
dropped. Only a reference *cycle* that was alive at a freeze and dropped after it escapes
the collector; every ``full_every`` seconds the policy unfreezes, collects everything once
and freezes again, so such garbage lives at most that long. That pass is the one long pause
left; its duration is in the stats (``full_ms_max``), next to the longest automatic pause.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

from vstor.clock import Clock, SystemClock

log = logging.getLogger("vstor.pygc")


class GcPolicy:
    def __init__(self, clock: Clock | None = None, freeze_every: float = 10.0, full_every: float = 3600.0) -> None:
        self.clock = clock or SystemClock()
        self.freeze_every = freeze_every
        self.full_every = full_every
        self._last_freeze: float | None = None
        self._last_full = self.clock.monotonic()
        self.freezes = 0
        self.full_passes = 0
        self.full_ms_max = 0.0
        self.auto_ms_max = 0.0  # the longest automatic collection seen
        self.auto_ms_total = 0.0
        self.auto_collections = 0
        self._t0 = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        """Freeze if ``freeze_every`` has passed since the last freeze (the first tick always
        freezes); run the full pass if ``full_every`` has passed since the last one."""
        now = self.clock.monotonic()
        if now - self._last_full >= self.full_every:
            self.full_pass()
        elif self._last_freeze is None or now - self._last_freeze >= self.freeze_every:
            gc.freeze()
            self.freezes += 1
            self._last_freeze = now

    def full_pass(self) -> None:
        """Collect every object once, frozen or not, then freeze the survivors."""
        t = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        ms = (time.perf_counter() - t) * 1e3
        self.full_passes += 1
        self.freezes += 1
        self.full_ms_max = max(self.full_ms_max, ms)
        self._last_full = self._last_freeze = self.clock.monotonic()
        log.info("full garbage collection: %d unreachable objects in %.0f ms", found, ms)

    def stats(self) -> dict:
        return {"freezes": self.freezes, "frozen_objects": gc.get_freeze_count(),
                "full_passes": self.full_passes, "full_ms_max": round(self.full_ms_max, 1),
                "auto_collections": self.auto_collections, "auto_ms_max": round(self.auto_ms_max, 1),
                "auto_ms_total": round(self.auto_ms_total, 1)}

    def _on_collect(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        ms = (time.perf_counter() - self._t0) * 1e3
        self.auto_collections += 1
        self.auto_ms_total += ms
        self.auto_ms_max = max(self.auto_ms_max, ms)

    # -- the thread ------------------------------------------------------------------------
    def start(self) -> None:
        gc.callbacks.append(self._on_collect)
        self.tick()
        self._thread = threading.Thread(target=self._loop, name="vstor-pygc", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self.clock.wait(self._stop, min(self.freeze_every, self.full_every)):
            try:
                self.tick()
            except Exception:  # never let a bookkeeping thread die silently
                log.exception("garbage-collection policy tick failed")

    def stop(self) -> None:
        """Stop the thread and give every object back to the collector."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._on_collect in gc.callbacks:
            gc.callbacks.remove(self._on_collect)
        gc.unfreeze()
