"""Pure: vstor's state as Prometheus metric families, from plain dicts and lists.

Each ``*_families`` function takes what one part of the daemon reports (the store's usage
and counters, FUSE's per-volume I/O rows, replication status, drive rows, the backup
catalog's jobs and restores) and returns the families a scrape shows; the collector in
metrics.py gathers them from the live objects. Nothing here reads a live object or a socket,
so tests feed them plain values.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from vstor.store.stats import LATENCY_BOUNDS

__all__ = ["backup_families", "drive_families", "gauge", "journal_families", "pair_families", "volume_families"]

PAIR_STATES = ("SIMPLEX", "COPY", "PAIR", "PFUL", "PSUS", "PSUE", "RESYNC", "SSWS", "SPLIT_BRAIN")
JOB_STATUSES = ("waiting", "running", "done", "failed", "expired")


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
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
        gauge("vstor_journal_segments", "journal segment files", usage["segments"]),
        gauge("vstor_journal_bytes", "bytes in the journal segment files", usage["journal_bytes"]),
        gauge("vstor_journal_tail_segment", "segment number of the journal tail (next append)", tail[0]),
        gauge("vstor_journal_tail_offset_bytes", "offset of the journal tail in its segment", tail[1]),
        gauge("vstor_journal_durable_segment", "segment number up to which the journal is synced", durable[0]),
        gauge("vstor_journal_durable_offset_bytes", "offset up to which that segment is synced", durable[1]),
        gauge("vstor_journal_checkpoint_segment", "segment number of the last checkpoint", ckpt[0]),
        gauge("vstor_journal_failed", "1 if the journal has failed (the array is read-only)", 1 if failed else 0),
        gauge("vstor_maintenance_failing", "1 while maintenance ticks fail", 1 if maintenance_error else 0),
        gauge("vstor_pool_free_bytes", "free bytes in the filesystem under the pool", usage["free_bytes"]),
        gauge("vstor_pool_mapped_bytes", "bytes mapped by all volumes", usage["mapped_bytes"]),
        gauge("vstor_pool_journal_bytes", "bytes the journal takes in the pool", usage["journal_bytes"]),
        gauge("vstor_spare_segment_bytes", "bytes of dead segment files kept for reuse by later segments",
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
            ("vstor_sweeps", "sweeps", "scans of aged volumes whose scattered records were read ahead"),
            ("vstor_sweep_bytes", "sweep_bytes", "journal bytes read ahead for scans of aged volumes"),
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
