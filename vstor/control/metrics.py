"""Prometheus metrics and the read-only dashboard, served by the daemon (``--metrics ADDR:PORT``).

``GET /metrics`` is the Prometheus text format, ``GET /`` the dashboard (vstor/control/dashboard.py).
Nothing is kept between scrapes except the ring of pair-lag samples the dashboard charts: the
collector reads the live objects (store, FUSE counters, maintenance, replication, media, backup
catalog) on every scrape. The ``*_families`` functions are pure: plain dicts in, metric families out.
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

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from vstor.errors import UsageError
from vstor.store.stats import LATENCY_BOUNDS

log = logging.getLogger("vstor.metrics")

LAG_INTERVAL = 10.0  # seconds between pair-lag samples for the dashboard
SHUTDOWN_POLL = 0.05  # serve_forever looks for stop() this often (its default 0.5 s delayed every stop)
LAG_SAMPLES = 360  # one hour of them
PAIR_STATES = ("SIMPLEX", "COPY", "PAIR", "PFUL", "PSUS", "PSUE", "RESYNC", "SSWS", "SPLIT_BRAIN")
JOB_STATUSES = ("waiting", "running", "done", "failed", "expired")


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT`` too) -> (addr, port); UsageError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--metrics wants ADDR:PORT, like 127.0.0.1:9450, not {text!r}")
    return host.strip("[]"), int(port)


# -- pure mapping ----------------------------------------------------------------------------------
def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def volume_families(names: dict[int, str], io: dict[tuple[int, str], list], mapped: dict[int, int],
                    sizes: dict[int, int]) -> list[Metric]:
    """Per-volume requests, bytes, latency (VolumeIO.snapshot rows), mapped and provisioned bytes."""
    out: list[Metric] = []
    for kind in ("read", "write"):
        reqs = CounterMetricFamily(f"vstor_volume_{kind}s", f"{kind} requests served through FUSE",
                                   labels=["volume"])
        nbytes = CounterMetricFamily(f"vstor_volume_{kind}_bytes", f"bytes {kind.replace('write', 'written')} "
                                     "through FUSE", labels=["volume"])
        lat = HistogramMetricFamily(f"vstor_volume_{kind}_latency_seconds",
                                    f"time to serve one FUSE {kind} request", labels=["volume"])
        for vid, name in sorted(names.items(), key=lambda x: x[1]):
            row = io.get((vid, kind)) or [0, 0, 0.0] + [0] * (len(LATENCY_BOUNDS) + 1)
            reqs.add_metric([name], row[0])
            nbytes.add_metric([name], row[1])
            acc, buckets = 0, []
            for bound, n in zip((*LATENCY_BOUNDS, float("inf")), row[3:], strict=True):
                acc += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), acc))
            lat.add_metric([name], buckets, row[2])
        out += [reqs, nbytes, lat]
    m = GaugeMetricFamily("vstor_volume_mapped_bytes", "bytes of the volume holding data", labels=["volume"])
    s = GaugeMetricFamily("vstor_volume_size_bytes", "provisioned size of the volume", labels=["volume"])
    for vid, name in names.items():
        m.add_metric([name], mapped.get(vid, 0))
        s.add_metric([name], sizes.get(vid, 0))
    return [*out, m, s]


def journal_families(usage: dict, counters: dict, failed: str, maintenance_error: str) -> list[Metric]:
    """Journal, GC and pool space: Store.usage(), Counters.as_dict(), journal.failed, Reclaimer.last_error."""
    tail, durable, ckpt = usage["tail"], usage["durable"], usage.get("checkpoint") or [0, 0]
    out: list[Metric] = [
        _gauge("vstor_journal_segments", "journal segment files", usage["segments"]),
        _gauge("vstor_journal_bytes", "bytes in the journal segment files", usage["journal_bytes"]),
        _gauge("vstor_journal_tail_segment", "segment number of the journal tail (next append)", tail[0]),
        _gauge("vstor_journal_tail_offset_bytes", "offset of the journal tail in its segment", tail[1]),
        _gauge("vstor_journal_durable_segment", "segment number up to which the journal is synced", durable[0]),
        _gauge("vstor_journal_durable_offset_bytes", "offset up to which that segment is synced", durable[1]),
        _gauge("vstor_journal_checkpoint_segment", "segment number of the last checkpoint", ckpt[0]),
        _gauge("vstor_journal_failed", "1 if the journal has failed (the array is read-only)", 1 if failed else 0),
        _gauge("vstor_maintenance_failing", "1 while maintenance ticks fail", 1 if maintenance_error else 0),
        _gauge("vstor_pool_free_bytes", "free bytes in the filesystem under the pool", usage["free_bytes"]),
        _gauge("vstor_pool_mapped_bytes", "bytes mapped by all volumes", usage["mapped_bytes"]),
        _gauge("vstor_pool_journal_bytes", "bytes the journal takes in the pool", usage["journal_bytes"]),
        _gauge("vstor_spare_segment_bytes", "bytes of dead segment files kept for reuse by later segments",
               usage.get("spare_bytes", 0)),
    ]
    for name, key, doc in (
            ("vstor_gc_relocated_bytes", "relocated_bytes",
             "bytes copied forward by maintenance: GC moves and chunk compactions"),
            ("vstor_gc_compacted_bytes", "compacted_bytes",
             "of those, bytes rewritten by chunk compactions (GC, fragment budget, defragmentation)"),
            ("vstor_gc_segments_deleted", "segments_deleted", "journal segments deleted by GC"),
            ("vstor_defrag_bytes", "defrag_bytes", "bytes rewritten in logical order by defragmentation"),
            ("vstor_defrag_windows", "defrag_windows", "scattered windows rewritten by defragmentation"),
            ("vstor_defrag_hints", "defrag_hints", "host reads that found their range scattered"),
            ("vstor_defrag_shared_skipped_bytes", "defrag_shared_skipped",
             "bytes of scattered windows left alone because a snapshot or clone shares them"),
            ("vstor_checkpoints", "checkpoints", "checkpoints written"),
            ("vstor_maintenance_errors", "maintenance_errors", "failed maintenance ticks"),
            ("vstor_fsyncs", "fsyncs", "journal syncs asked by fsync or flush"),
            ("vstor_trims", "trims", "trim (discard) requests"),
            ("vstor_trim_bytes", "trim_bytes", "bytes released by trims"),
            ("vstor_read_errors", "read_errors", "reads that failed verification"),
            ("vstor_enospc", "enospc", "writes refused because the pool was full"),
            ("vstor_snapshots_taken", "snapshots_taken", "snapshots taken")):
        out.append(CounterMetricFamily(name, doc, value=counters.get(key, 0)))
    out.append(CounterMetricFamily("vstor_journal_prepared_bytes",
                                   "zeros written ahead of the journal tail while syncs were dense",
                                   value=usage.get("prepared_bytes", 0)))
    return out


def pair_families(pairs: list[dict]) -> list[Metric]:
    """Replication pairs from Replication.status(): state, lag, bytes, throughput."""
    labels = ["group", "role"]
    state = GaugeMetricFamily("vstor_pair_state", "1 for the pair's current state", labels=["group", "state"])
    connected = GaugeMetricFamily("vstor_pair_connected", "1 while the pair's connection is up", labels=labels)
    lag_s = GaugeMetricFamily("vstor_pair_lag_seconds", "age of the oldest record the peer has not acked",
                              labels=labels)
    lag_r = GaugeMetricFamily("vstor_pair_lag_records", "records the peer is behind", labels=labels)
    lag_b = GaugeMetricFamily("vstor_pair_lag_bytes", "journal bytes not yet acknowledged", labels=labels)
    dirty = GaugeMetricFamily("vstor_pair_dirty_bytes", "bytes marked dirty in the pair's bitmaps", labels=labels)
    sent = CounterMetricFamily("vstor_pair_sent_bytes", "bytes sent to the peer", labels=labels)
    recv = CounterMetricFamily("vstor_pair_received_bytes", "bytes received from the peer", labels=labels)
    rate = GaugeMetricFamily("vstor_pair_throughput_bytes_per_second", "send rate over the last 5 s", labels=labels)
    for p in pairs:
        lv = [p["group"], p.get("role", "")]
        for s in PAIR_STATES:
            state.add_metric([p["group"], s], 1 if p.get("state") == s else 0)
        connected.add_metric(lv, 1 if p.get("connected") else 0)
        lag_s.add_metric(lv, p.get("lag_seconds", 0) or 0)
        lag_r.add_metric(lv, p.get("lag_records", 0) or 0)
        lag_b.add_metric(lv, p.get("lag_bytes", 0) or 0)
        dirty.add_metric(lv, p.get("dirty_bytes", 0) or 0)
        sent.add_metric(lv, p.get("bytes_sent", 0) or 0)
        recv.add_metric(lv, p.get("bytes_received", 0) or 0)
        rate.add_metric(lv, p.get("throughput", 0) or 0)
    return [state, connected, lag_s, lag_r, lag_b, dirty, sent, recv, rate]


def drive_families(drives: list[dict]) -> list[Metric]:
    """Tape and disc drives (``MediaManager.drive_rows``): loaded, open, bytes read and written since the load."""
    labels = ["library", "drive", "type"]
    loaded = GaugeMetricFamily("vstor_drive_loaded", "1 if a medium is in the drive", labels=labels)
    in_use = GaugeMetricFamily("vstor_drive_open", "1 while the drive is open for I/O", labels=labels)
    rd = CounterMetricFamily("vstor_drive_read_bytes", "bytes read from the medium since it was loaded",
                             labels=labels)
    wr = CounterMetricFamily("vstor_drive_write_bytes", "bytes written to the medium since it was loaded",
                             labels=labels)
    for d in drives:
        lv = [d["library"], str(d["drive"]), d["type"]]
        loaded.add_metric(lv, 1 if d.get("barcode") else 0)
        in_use.add_metric(lv, 1 if d.get("open") else 0)
        rd.add_metric(lv, d.get("read_bytes", 0))
        wr.add_metric(lv, d.get("write_bytes", 0))
    return [loaded, in_use, rd, wr]


def backup_families(policies: list[str], jobs: list[dict], restores: list[dict]) -> list[Metric]:
    """Backup results from the catalog: jobs by policy and status, the last job per policy,
    verify results, restore durations."""
    counts: dict[tuple[str, str], int] = {}
    verify: dict[tuple[str, str], int] = {}
    last: dict[str, dict] = {}
    for j in jobs:
        counts[(j["policy"], j["status"])] = counts.get((j["policy"], j["status"]), 0) + 1
        if j.get("verify"):
            verify[(j["policy"], j["verify"])] = verify.get((j["policy"], j["verify"]), 0) + 1
        if j["status"] in ("done", "failed") and (j["policy"] not in last or j["id"] > last[j["policy"]]["id"]):
            last[j["policy"]] = j
    total = CounterMetricFamily("vstor_backup_jobs", "backup jobs in the catalog", labels=["policy", "status"])
    for pol in sorted(set(policies) | {p for p, _ in counts}):
        for st in JOB_STATUSES:
            total.add_metric([pol, st], counts.get((pol, st), 0))
    ver = CounterMetricFamily("vstor_backup_verify", "verified jobs by result", labels=["policy", "result"])
    for (pol, res), n in sorted(verify.items()):
        ver.add_metric([pol, res], n)
    last_t = GaugeMetricFamily("vstor_backup_last_job_timestamp_seconds", "end time of the last finished job",
                               labels=["policy"])
    last_ok = GaugeMetricFamily("vstor_backup_last_job_success", "1 if the last finished job succeeded",
                                labels=["policy"])
    last_b = GaugeMetricFamily("vstor_backup_last_job_bytes", "bytes backed up by the last finished job",
                               labels=["policy"])
    for pol, j in sorted(last.items()):
        last_t.add_metric([pol], j.get("ended") or 0)
        last_ok.add_metric([pol], 1 if j["status"] == "done" else 0)
        last_b.add_metric([pol], j.get("bytes") or 0)
    rest = HistogramMetricFamily("vstor_backup_restore_duration_seconds", "time one restore took",
                                 labels=["status"])
    bounds = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, float("inf"))
    for status in sorted({r["status"] for r in restores}):
        secs = [r["seconds"] for r in restores if r["status"] == status]
        buckets = [("+Inf" if b == float("inf") else repr(b), sum(1 for s in secs if s <= b)) for b in bounds]
        rest.add_metric([status], buckets, sum(secs))
    return [total, ver, last_t, last_ok, last_b, rest]


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
                yield _gauge("vstor_scrape_error", "1 if a part of the scrape failed", 1)

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
