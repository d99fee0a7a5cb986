"""Two arrays paired in one process: the fixture of the in-process replication tests.

Each site is a real Store in its own pool directory with its own Replication manager; they
talk over a vstor.replication.memlink.MemNet (real wire frames, no sockets, no TLS) and
share a :class:`VirtualClock` that only the test (and bandwidth pacing) moves. Nothing
sleeps: the tests wait for conditions, and time-driven behaviour (pings, timeouts,
suspend-after, backoff) happens when the test advances the clock.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from poolkit import make_pool  # noqa: E402

from vstor.faults import Faults  # noqa: E402
from vstor.replication.manager import Replication  # noqa: E402
from vstor.replication.memlink import MemNet  # noqa: E402
from vstor.replication.pairstate import SHIPPING  # noqa: E402
from vstor.store.store import Store  # noqa: E402

MiB = 1 << 20


class VirtualClock:
    """Time that moves only with :meth:`advance`. ``wait`` returns when the event is set or the
    clock has moved ``timeout`` past the call (polling the event in real time, 5 ms a check)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now, self.mono = start, 1000.0
        self._lock = threading.Lock()

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
            self.mono += seconds

    def wait(self, event: threading.Event, timeout: float) -> bool:
        deadline = self.mono + timeout
        while not event.is_set() and self.mono < deadline:
            event.wait(0.005)
        return event.is_set()


def wait_until(cond: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Wait (real time, for the threads to do their work) until ``cond()`` is true."""
    ev = threading.Event()
    for _ in range(int(timeout / 0.005)):
        if cond():
            return
        ev.wait(0.005)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting until {what}")


@dataclass
class Site:
    name: str
    address: str
    pool: str
    net: MemNet
    clock: VirtualClock
    faults: Faults = field(default_factory=Faults)
    key_file: str | None = None
    store: Store = field(init=False)
    repl: Replication = field(init=False)

    def open(self) -> Site:
        self.store = Store.open(self.pool, key_file=self.key_file)
        self.repl = Replication(self.store, name=self.name, clock=self.clock, faults=self.faults,
                                dial=self.net.dialer(self.name))
        self.net.attach(self.address, self.name, self.repl.serve)
        self.repl.start()
        return self

    def crash(self) -> None:
        """The process dies: its connections reset, its threads end, the store is dropped
        without a checkpoint (what it wrote is on disk, as after kill -9)."""
        self.net.detach(self.address)
        self.net.reset(self.name)
        self.repl.stop()
        self.net.join()
        self.store.close(checkpoint=False)

    def close(self) -> None:
        self.net.detach(self.address)
        self.repl.stop()
        self.net.join()
        self.store.close()

    # -- the group and its data ------------------------------------------------------------------
    def vid(self, name: str) -> int:
        return self.store.volume(name).id

    def write(self, volume: str, offset: int, data: bytes) -> None:
        """A host write and its fsync."""
        self.store.write(self.vid(volume), offset, data)
        self.store.sync()

    def read(self, volume: str, offset: int = 0, n: int | None = None) -> bytes:
        vol = self.store.volume(volume)
        return self.store.read(vol.id, offset, vol.size - offset if n is None else n)

    def status(self, group: str = "g") -> dict:
        return self.repl.status(group)[0]

    def state(self, group: str = "g") -> str:
        return self.repl.pairs[group].state

    def shipper(self, group: str = "g"):  # noqa: ANN201
        return self.repl.shippers.get(group)


@dataclass
class Pairing:
    a: Site
    b: Site
    net: MemNet
    clock: VirtualClock

    def sites(self) -> list[Site]:
        return [self.a, self.b]

    def pair(self, group: str = "g", wait: bool = True, **kw: object) -> None:
        """Pair ``group`` from A (primary) to B (secondary) and wait for PAIR at both."""
        self.b.repl.create(group, self.a.address, self.a.name, None, True)
        self.a.repl.create(group, self.b.address, self.b.name, None, False, **kw)  # type: ignore[arg-type]
        if wait:
            wait_until(lambda: self.a.state(group) == "PAIR" and self.b.state(group) == "PAIR", f"{group} in PAIR")

    def primary(self, group: str = "g") -> Site:
        return next(s for s in self.sites() if s.repl.pairs[group].role == "primary")

    def drained(self, group: str = "g") -> bool:
        prim = self.primary(group)
        sec = self.b if prim is self.a else self.a
        sh = prim.shipper(group)
        seq = prim.repl.applied(prim.repl.pairs[group])
        return (sh is not None and prim.state(group) in ("PAIR", "PFUL") and sh.acked_seq >= seq
                and sec.repl.applied(sec.repl.pairs[group]) >= seq)

    def wait_drained(self, group: str = "g") -> None:
        wait_until(lambda: self.drained(group), f"{group} drained")

    def tick(self, seconds: float, step: float = 0.5) -> None:
        """Move the clock ``seconds`` in steps; after each, while the network is up, let every
        connected shipper hear from its peer (a ping and its ACK) so that no healthy
        connection looks dead only because the clock jumped."""
        moved = 0.0
        while moved < seconds - 1e-9:
            self.clock.advance(min(step, seconds - moved))
            moved += step
            if self.net.partitioned:
                continue
            for s in self.sites():
                for g, sh in list(s.repl.shippers.items()):
                    wait_until(lambda sh=sh, s=s, g=g: sh.conn is None or sh.conn.closed or not sh.is_alive()
                               or getattr(s.repl.pairs.get(g), "state", "") not in SHIPPING
                               or sh.last_rx >= self.clock.monotonic() - 1.0 - 2 * self.net.delay,
                               "the shipper hears its peer")  # real time: threads on a loaded machine

    def tick_until(self, cond: Callable[[], object], what: str, step: float = 0.5, limit: float = 120.0) -> None:
        """Move the clock in steps until ``cond()``, giving the threads a moment after each (for
        what happens on time: timeouts, backoff, suspend-after); fails after ``limit`` seconds
        of the clock."""
        moved = 0.0
        while not cond():
            if moved >= limit:
                raise AssertionError(f"{what}: not after {limit:.0f}s on the clock")
            self.tick(step, step)
            moved += step
            try:
                wait_until(cond, what, 0.05)
            except AssertionError:
                pass

    def same(self, volumes: tuple[str, ...] = ("orders", "payments")) -> None:
        for v in volumes:
            assert self.a.read(v) == self.b.read(v), f"volume {v} differs between the sites"

    def close(self) -> None:
        for s in self.sites():
            try:
                s.close()
            except Exception:  # noqa: BLE001 - close the other site too; the test already failed
                pass


def make_pairing(tmp: Path, size: int = 8 * MiB, a_faults: Faults | None = None,
                 b_faults: Faults | None = None, encrypt: bool = False) -> Pairing:
    """Two sites with pools under ``tmp``; A holds volumes orders and payments in group g.
    ``encrypt``: each pool is encrypted with its own key."""
    clock = VirtualClock()
    net = MemNet(clock)
    sites = []
    for name, faults in (("a", a_faults), ("b", b_faults)):
        pool = make_pool(tmp / f"site-{name}", encrypt=encrypt)
        key = str(tmp / f"site-{name}" / "key") if encrypt else None
        sites.append(Site(f"site-{name}", f"10.9.0.{len(sites) + 1}:7450", pool, net, clock,
                          faults or Faults(), key).open())
    a = sites[0]
    for v in ("orders", "payments"):
        a.store.create_volume(v, size)
    a.store.event(lambda st: st.catalog.make_group_create(st.table, "g", ["orders", "payments"], 0.0))
    return Pairing(sites[0], sites[1], net, clock)
