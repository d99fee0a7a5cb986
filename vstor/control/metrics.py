"""Prometheus metrics and the read-only dashboard, served by the daemon (``--metrics ADDR:PORT``).

``GET /metrics`` is the Prometheus text format, ``GET /`` the dashboard (vstor/control/dashboard.py).
Nothing is kept between scrapes except the ring of pair-lag samples the dashboard charts: the
collector reads the live objects (store, FUSE counters, maintenance, replication, media, backup
catalog) on every scrape and maps them with the pure functions of families.py.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from vstor.control.families import (
    backup_families,
    drive_families,
    gauge,
    journal_families,
    pair_families,
    volume_families,
)
from vstor.errors import UsageError

log = logging.getLogger("vstor.metrics")

LAG_INTERVAL = 10.0  # seconds between pair-lag samples for the dashboard
SHUTDOWN_POLL = 0.05  # serve_forever looks for stop() this often (its default 0.5 s delayed every stop)
LAG_SAMPLES = 360  # one hour of them


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT`` too) -> (addr, port); UsageError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--metrics wants ADDR:PORT, like 127.0.0.1:9450, not {text!r}")
    return host.strip("[]"), int(port)


# -- the live objects --------------------------------------------------------------------------------
@dataclass
class Sources:
    """What the daemon runs; anything may be None (tests, or a part that did not start)."""

    store: Any = None
    fs: Any = None  # VolumeFS: .io (VolumeIO)
    reclaimer: Any = None
    replication: Any = None
    media: Any = None
    backup: Any = None


class VstorCollector:
    """A prometheus_client collector over the live objects: every scrape reads them afresh."""

    def __init__(self, src: Sources) -> None:
        self.src = src

    def collect(self) -> Iterator[Metric]:
        for part in (self._store, self._pairs, self._drives, self._backup):
            try:
                yield from part()
            except Exception as e:  # one failing part must not hide the others
                log.warning("metrics: %s failed: %s", part.__name__, e)
                yield gauge("vstor_scrape_error", "1 if a part of the scrape failed", 1)

    def _store(self) -> Iterable[Metric]:
        st = self.src.store
        if st is None:
            return []
        vols = st.volumes()
        names = {v.id: v.name for v in vols}
        io = self.src.fs.io.snapshot() if self.src.fs is not None else {}
        mapped = {v.id: st.volume_usage(v.id) for v in vols}
        err = getattr(self.src.reclaimer, "last_error", "") if self.src.reclaimer else ""
        return [*volume_families(names, io, mapped, {v.id: v.size for v in vols}),
                *journal_families(st.usage(), st.stats.as_dict(), st.journal.failed or "", err or "")]

    def _pairs(self) -> Iterable[Metric]:
        return pair_families(self.src.replication.status()) if self.src.replication else []

    def _drives(self) -> Iterable[Metric]:
        return drive_families(self.src.media.drive_rows()) if self.src.media else []

    def _backup(self) -> Iterable[Metric]:
        b = self.src.backup
        if b is None:
            return []
        cat = b.catalog
        return backup_families([p["name"] for p in cat.policies()], cat.jobs(), cat.restores())


class LagRing:
    """Pair lag sampled every ``interval`` seconds, the last hour kept: [(time, {group: lag_s})]."""

    def __init__(self, sample: Callable[[], dict[str, float]], interval: float = LAG_INTERVAL,
                 maxlen: int = LAG_SAMPLES) -> None:
        self.sample, self.interval = sample, interval
        self.ring: deque[tuple[float, dict[str, float]]] = deque(maxlen=maxlen)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vstor-lag-sampler", daemon=True)

    def take(self) -> None:
        try:
            self.ring.append((time.time(), self.sample()))
        except Exception as e:
            log.warning("pair lag sample failed: %s", e)

    def _run(self) -> None:
        while True:
            self.take()
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def samples(self) -> list[tuple[float, dict[str, float]]]:
        return list(self.ring)


class MetricsServer:
    """HTTP on ADDR:PORT: /metrics for Prometheus, / for the dashboard. Read-only: GET and HEAD."""

    def __init__(self, address: str, src: Sources, lag_interval: float = LAG_INTERVAL) -> None:
        from vstor.control.dashboard import render

        self.addr, self.port = parse_listen(address)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(VstorCollector(src))
        self.lag = LagRing(lambda: {p["group"]: float(p.get("lag_seconds", 0) or 0)
                                    for p in (src.replication.status() if src.replication else [])},
                           lag_interval)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/metrics":
                        body, ctype = generate_latest(server.registry), CONTENT_TYPE_LATEST
                    elif path in ("/", "/index.html"):
                        body, ctype = render(src, server.lag.samples()).encode(), "text/html; charset=utf-8"
                    else:
                        self.send_error(404)
                        return
                except Exception as e:
                    log.warning("metrics: %s failed: %s", path, e)
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_GET  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # scrapes every few seconds would flood the daemon log

        try:
            self.httpd = ThreadingHTTPServer((self.addr, self.port), Handler)
        except OSError as e:
            raise UsageError(f"cannot serve metrics on {address}: {e.strerror or e}") from None
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(SHUTDOWN_POLL,), name="vstor-metrics",
                                        daemon=True)

    def start(self) -> None:
        self.lag.start()
        self._thread.start()
        log.info("metrics and dashboard on http://%s:%d/", self.addr, self.httpd.server_address[1])

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.httpd.shutdown()
        self.httpd.server_close()
        self.lag.stop()
