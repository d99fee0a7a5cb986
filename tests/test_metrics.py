"""Metrics and dashboard (issue #27): the pure mappings in-process, then a real daemon with
--metrics scraped twice, its dashboard loaded in headless Chromium, and the Grafana JSON checked
against a real scrape."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from harness import read_direct
from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vstor.control import dashboard
from vstor.control.families import backup_families, journal_families, pair_families, volume_families
from vstor.control.metrics import LagRing, Sources, VstorCollector, parse_listen
from vstor.errors import UsageError
from vstor.store.stats import LATENCY_BOUNDS, VolumeIO

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "docs" / "grafana-dashboard.json"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def scrape_families(families: list) -> dict:
    """name -> {labels tuple: value} over every sample of the given metric families."""
    class One:
        def collect(self):  # noqa: ANN202
            yield from families

    reg = CollectorRegistry()
    reg.register(One())
    return parse(generate_latest(reg).decode())


def parse(text: str) -> dict:
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        out.setdefault(fam.name, {})  # declared, even with no samples
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(m: dict, name: str, **labels: str) -> float:
    return m[name][tuple(sorted(labels.items()))]


# -- pure mappings ------------------------------------------------------------------------------
def test_volume_io_rows_map_to_counters_and_cumulative_histograms():
    io = VolumeIO()
    io.record(1, "write", 4096, 0.00005)  # first bucket
    io.record(1, "write", 65536, 0.003)  # the 0.005 bucket
    io.record(1, "write", 4096, 9.0)  # +Inf
    io.record(2, "read", 512, 0.0002)
    m = scrape_families(volume_families({1: "db", 2: "logs"}, io.snapshot(), {1: 8192}, {1: 1 << 30, 2: 1 << 20}))
    assert value(m, "vstor_volume_writes_total", volume="db") == 3
    assert value(m, "vstor_volume_write_bytes_total", volume="db") == 4096 + 65536 + 4096
    assert value(m, "vstor_volume_write_latency_seconds_bucket", volume="db", le="0.0001") == 1
    assert value(m, "vstor_volume_write_latency_seconds_bucket", volume="db", le="0.005") == 2
    assert value(m, "vstor_volume_write_latency_seconds_bucket", volume="db", le="2.5") == 2
    assert value(m, "vstor_volume_write_latency_seconds_bucket", volume="db", le="+Inf") == 3
    assert value(m, "vstor_volume_write_latency_seconds_count", volume="db") == 3
    assert value(m, "vstor_volume_write_latency_seconds_sum", volume="db") == pytest.approx(9.00305)
    assert value(m, "vstor_volume_reads_total", volume="logs") == 1
    assert value(m, "vstor_volume_reads_total", volume="db") == 0  # every volume has every series
    assert value(m, "vstor_volume_mapped_bytes", volume="db") == 8192
    assert value(m, "vstor_volume_size_bytes", volume="logs") == 1 << 20
    assert len(LATENCY_BOUNDS) + 1 == len([k for k in m["vstor_volume_read_latency_seconds_bucket"]]) // 2


def test_volume_io_record_is_cheap():
    """The FUSE path pays one VolumeIO.record per request: a few hundred ns, against the tens
    of microseconds a FUSE request takes."""
    io = VolumeIO()
    n = 200_000
    t0 = time.perf_counter()
    for i in range(n):
        io.record(i & 7, "write", 4096, 0.0003)
    per_call = (time.perf_counter() - t0) / n
    print(f"VolumeIO.record: {per_call * 1e9:.0f} ns per request")
    assert per_call < 5e-6
    assert sum(r[0] for r in io.snapshot().values()) == n


def test_journal_families_map_usage_counters_and_failure():
    usage = {"segments": 3, "journal_bytes": 3 << 20, "mapped_bytes": 1 << 20, "free_bytes": 10 << 30,
             "durable": [4, 100], "tail": [4, 200], "checkpoint": [2, 0], "group_seq": {}, "spare_bytes": 32 << 20,
             "prepared_bytes": 48 << 20}
    counters = {"relocated_bytes": 777, "compacted_bytes": 512, "checkpoints": 5, "maintenance_errors": 2,
                "segments_deleted": 1}
    m = scrape_families(journal_families(usage, counters, "EIO on segment 4", "disk full"))
    assert value(m, "vstor_journal_segments") == 3
    assert value(m, "vstor_journal_tail_offset_bytes") == 200
    assert value(m, "vstor_journal_durable_segment") == 4
    assert value(m, "vstor_journal_failed") == 1
    assert value(m, "vstor_maintenance_failing") == 1
    assert value(m, "vstor_pool_free_bytes") == 10 << 30
    assert value(m, "vstor_gc_relocated_bytes_total") == 777
    assert value(m, "vstor_gc_compacted_bytes_total") == 512
    assert value(m, "vstor_spare_segment_bytes") == 32 << 20
    assert value(m, "vstor_journal_prepared_bytes_total") == 48 << 20
    assert value(m, "vstor_checkpoints_total") == 5
    assert value(m, "vstor_maintenance_errors_total") == 2
    ok = scrape_families(journal_families(usage, {}, "", ""))
    assert value(ok, "vstor_journal_failed") == 0 and value(ok, "vstor_trims_total") == 0


class FakeReplication:
    """Replication.status() as the manager returns it for a primary and a secondary (the real
    pair needs two arrays in network namespaces: tests/test_replication.py covers that)."""

    def __init__(self) -> None:
        self.lag = 2.5

    def status(self) -> list[dict]:
        return [{"group": "g1", "role": "primary", "state": "PAIR", "connected": True, "lag_seconds": self.lag,
                 "lag_records": 12, "lag_bytes": 65536, "dirty_bytes": 0, "bytes_sent": 1 << 20,
                 "throughput": 4096, "acked_seq": 7},
                {"group": "g2", "role": "secondary", "state": "PSUE", "connected": False,
                 "bytes_received": 999, "lag_records": 3}]


def test_pair_families_from_replication_status():
    m = scrape_families(pair_families(FakeReplication().status()))
    assert value(m, "vstor_pair_lag_seconds", group="g1", role="primary") == 2.5
    assert value(m, "vstor_pair_lag_bytes", group="g1", role="primary") == 65536
    assert value(m, "vstor_pair_sent_bytes_total", group="g1", role="primary") == 1 << 20
    assert value(m, "vstor_pair_throughput_bytes_per_second", group="g1", role="primary") == 4096
    assert value(m, "vstor_pair_connected", group="g2", role="secondary") == 0
    assert value(m, "vstor_pair_received_bytes_total", group="g2", role="secondary") == 999
    assert value(m, "vstor_pair_state", group="g1", state="PAIR") == 1
    assert value(m, "vstor_pair_state", group="g1", state="PSUS") == 0
    assert value(m, "vstor_pair_state", group="g2", state="PSUE") == 1


def test_collector_reads_live_objects_on_each_scrape():
    repl = FakeReplication()
    reg = CollectorRegistry(auto_describe=False)
    reg.register(VstorCollector(Sources(replication=repl)))
    assert value(parse(generate_latest(reg).decode()), "vstor_pair_lag_seconds", group="g1", role="primary") == 2.5
    repl.lag = 40.0
    assert value(parse(generate_latest(reg).decode()), "vstor_pair_lag_seconds", group="g1", role="primary") == 40


def test_backup_families_jobs_last_job_verify_and_restores():
    jobs = [{"id": 1, "policy": "nightly", "status": "done", "ended": 100.0, "bytes": 10, "verify": "ok"},
            {"id": 2, "policy": "nightly", "status": "failed", "ended": 200.0, "bytes": 0, "verify": None},
            {"id": 3, "policy": "nightly", "status": "running", "ended": None, "bytes": 0, "verify": None},
            {"id": 4, "policy": "weekly", "status": "done", "ended": 50.0, "bytes": 7, "verify": "failed"}]
    restores = [{"status": "ok", "seconds": 3.0}, {"status": "ok", "seconds": 120.0}]
    m = scrape_families(backup_families(["nightly", "weekly", "idle"], jobs, restores))
    assert value(m, "vstor_backup_jobs_total", policy="nightly", status="done") == 1
    assert value(m, "vstor_backup_jobs_total", policy="nightly", status="failed") == 1
    assert value(m, "vstor_backup_jobs_total", policy="idle", status="done") == 0
    assert value(m, "vstor_backup_last_job_timestamp_seconds", policy="nightly") == 200
    assert value(m, "vstor_backup_last_job_success", policy="nightly") == 0  # the last finished one failed
    assert value(m, "vstor_backup_last_job_success", policy="weekly") == 1
    assert value(m, "vstor_backup_verify_total", policy="weekly", result="failed") == 1
    assert value(m, "vstor_backup_restore_duration_seconds_bucket", status="ok", le="5.0") == 1
    assert value(m, "vstor_backup_restore_duration_seconds_count", status="ok") == 2


def test_parse_listen():
    assert parse_listen("127.0.0.1:9450") == ("127.0.0.1", 9450)
    assert parse_listen("[::1]:80") == ("::1", 80)
    for bad in ("9450", "host:", "host:x", "h:70000"):
        with pytest.raises(UsageError):
            parse_listen(bad)


def test_lag_ring_keeps_the_last_samples():
    vals = iter(range(100))
    ring = LagRing(lambda: {"g": float(next(vals))}, interval=10, maxlen=3)
    for _ in range(5):
        ring.take()
    assert [d["g"] for _, d in ring.samples()] == [2.0, 3.0, 4.0]


def test_dashboard_page_has_status_volumes_lag_chart_and_drives():
    now = 10_000.0
    data = {"pool": "/p<x>", "pid": 1, "now": now, "failed": "", "maintenance_error": "",
            "usage": {"journal_bytes": 1 << 20, "free_bytes": 3 << 20, "mapped_bytes": 1 << 19, "segments": 1,
                      "tail": [1, 5], "durable": [1, 5]},
            "volumes": [{"name": "db", "size": 1 << 30, "mapped": 0, "read_bytes": 1, "write_bytes": 2}],
            "pairs": FakeReplication().status(),
            "drives": [{"library": "lib", "drive": 0, "type": "tape", "barcode": "A00001L9", "open": True,
                        "read_bytes": 0, "write_bytes": 5}]}
    html = dashboard.page(data, [(now - 3600 + 10 * i, {"g1": i % 7}) for i in range(360)])
    assert '<svg id="lag-chart"' in html and "<polyline" in html
    assert '<table id="volumes"' in html and "<td>db</td>" in html
    assert "A00001L9" in html and "/p&lt;x&gt;" in html  # escaped
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def grafana_metric_names() -> set[str]:
    doc = json.loads(GRAFANA.read_text())
    names = set()
    for panel in doc["panels"]:
        assert panel["targets"], f"panel {panel['title']!r} has no target"
        for t in panel["targets"]:
            found = re.findall(r"\bvstor_[a-z0-9_]+", t["expr"])
            assert found, f"panel {panel['title']!r}: no vstor metric in {t['expr']!r}"
            names.update(found)
    return names


# -- a real daemon -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers["Content-Type"], r.read().decode()


def write_volume(image: str, mib: int, offset: int = 0) -> None:
    fd = os.open(image, os.O_RDWR)
    try:
        block = os.urandom(64 << 10)
        for i in range(mib * 16):
            os.pwrite(fd, block, offset + i * len(block))
        os.fsync(fd)
    finally:
        os.close(fd)
    read_direct(image, offset, 1 << 20)  # past the page cache: a FUSE read


def start_with_metrics(array_factory):  # noqa: ANN201
    arr = array_factory()
    port = free_port()
    arr.start(args=["--metrics", f"127.0.0.1:{port}"])
    arr.create("vol1", "64M")
    return arr, f"http://127.0.0.1:{port}"


@pytest.mark.root
def test_daemon_metrics_grow_with_io_and_cover_the_grafana_dashboard(array_factory):
    arr, url = start_with_metrics(array_factory)
    write_volume(arr.image("vol1"), 2)
    status, ctype, text = get(url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    first = parse(text)
    write_volume(arr.image("vol1"), 3, offset=8 << 20)
    second = parse(get(url + "/metrics")[2])
    w1 = value(first, "vstor_volume_write_bytes_total", volume="vol1")
    w2 = value(second, "vstor_volume_write_bytes_total", volume="vol1")
    assert w1 >= 2 << 20 and w2 - w1 >= 3 << 20
    assert value(second, "vstor_volume_writes_total", volume="vol1") > value(first, "vstor_volume_writes_total",
                                                                              volume="vol1")
    assert value(second, "vstor_volume_write_latency_seconds_count", volume="vol1") == \
        value(second, "vstor_volume_writes_total", volume="vol1")
    assert value(second, "vstor_volume_read_bytes_total", volume="vol1") > 0
    assert value(second, "vstor_journal_segments") >= 1
    assert value(second, "vstor_journal_bytes") >= 5 << 20
    assert value(second, "vstor_journal_failed") == 0
    assert value(second, "vstor_pool_free_bytes") > 0
    assert "vstor_scrape_error" not in second
    # Every metric the Grafana dashboard queries is in the scrape: declared, with samples where
    # the array has the object (no pair, library or backup policy here: those are declared only).
    declared = set(second) | {n + suffix for n in second for suffix in ("_total", "_bucket", "_count", "_sum")}
    missing = sorted(n for n in grafana_metric_names() if n not in declared)
    assert not missing, f"the Grafana dashboard queries metrics the daemon does not export: {missing}"
    with pytest.raises(urllib.error.HTTPError) as e:
        get(url + "/nothing")
    assert e.value.code == 404


@pytest.mark.root
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs the Debian package)")
def test_dashboard_in_headless_chromium(array_factory, tmp_path):
    arr, url = start_with_metrics(array_factory)
    write_volume(arr.image("vol1"), 1)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync", "--window-size=1200,900"]
    shot = tmp_path / "dashboard.png"
    subprocess.run([*flags, f"--user-data-dir={tmp_path / 'profile1'}", f"--screenshot={shot}", url + "/"],
                   check=True, capture_output=True, timeout=90)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, f"screenshot of {len(png)} bytes"
    dom = subprocess.run([*flags, f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", url + "/"],
                         check=True, capture_output=True, timeout=90, text=True).stdout
    assert re.search(r'<svg[^>]*id="lag-chart"', dom), dom[:2000]
    assert re.search(r'<table id="volumes"', dom) and "<td>vol1</td>" in dom
    assert 'id="capacity-chart"' in dom and 'id="drives"' in dom


@pytest.mark.root
def test_metrics_port_in_use_fails_the_start_cleanly(array_factory):
    arr = array_factory()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = arr.start(check=False, args=["--metrics", f"127.0.0.1:{busy.getsockname()[1]}"])
    assert r.returncode == 2 and "cannot serve metrics" in r.stderr, r.stderr
    arr.start()  # everything taken before the metrics step was released


@pytest.mark.root
def test_a_real_pair_under_fio_load_shows_in_the_scrape_and_in_status(tmp_path):
    """Two arrays in the DR lab, group g paired from A to B; A serves metrics inside its network
    namespace (scraped from there with nsenter); fio writes to a member volume meanwhile."""
    from replkit import make_sites, setup_group, teardown

    made: list = []
    try:
        sites = make_sites(tmp_path, made)
        a, ns = sites.a, sites.lab.ns("a")
        url = f"http://{sites.lab.address('a')}:9464/metrics"
        a.stop()
        a.start(args=[*a.start_args, "--metrics", f"{sites.lab.address('a')}:9464"])
        setup_group(a)
        sites.pair("g")

        def scrape() -> dict:
            r = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-c",
                                f"import urllib.request; print(urllib.request.urlopen({url!r}).read().decode())"],
                               capture_output=True, text=True, timeout=30, check=True)
            return parse(r.stdout)

        first = scrape()
        fio = subprocess.run(["fio", "--name=load", f"--filename={a.image('orders')}", "--rw=randwrite",
                              "--bs=4k", "--size=8M", "--time_based=1", "--runtime=3", "--ioengine=psync",
                              "--allow_file_create=0", "--end_fsync=1", "--output-format=json"],
                             capture_output=True, text=True, timeout=60)
        assert fio.returncode == 0, fio.stderr
        second = scrape()
        w1 = first["vstor_volume_write_bytes_total"].get((("volume", "orders"),), 0)
        w2 = value(second, "vstor_volume_write_bytes_total", volume="orders")
        assert w2 - w1 >= 1 << 20, (w1, w2)  # fio's writes are counted
        assert (("group", "g"), ("role", "primary")) in second["vstor_pair_lag_seconds"]  # the real pair's lag
        assert value(second, "vstor_pair_state", group="g", state="PAIR") == 1
        assert value(second, "vstor_pair_sent_bytes_total", group="g", role="primary") > 0
        st = json.loads(a.vstor("status", "--json").stdout)
        assert [p["group"] for p in st["pairs"]] == ["g"], st["pairs"]
    finally:
        teardown(made)
