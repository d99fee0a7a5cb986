"""The array's request counters (vstor/store/stats.py) count without a lock per request: each
request is queued and the totals take the queue in when they are read. Every request must
be counted exactly once, by any number of threads, and a reader must see every request
counted before it asked. Also the store's wait for reads in flight, whose wake-up the last
read now gives only when someone waits."""

from __future__ import annotations

import random
import threading

from poolkit import make_pool

from vstor.store.stats import FOLD_AT, LATENCY_BOUNDS, Counters, VolumeIO, size_bucket
from vstor.store.store import Store

SIZES = (512, 4096, 4096, 65536, 1 << 20, 3000)


def _expected(requests: list[tuple[str, int]]) -> dict:
    out = {"reads": 0, "read_bytes": 0, "writes": 0, "write_bytes": 0, "read_sizes": {}, "write_sizes": {}}
    for kind, size in requests:
        out[kind + "s"] += 1
        out[kind + "_bytes"] += size
        sizes = out[kind + "_sizes"]
        sizes[size_bucket(size)] = sizes.get(size_bucket(size), 0) + 1
    return out


def _seen(c: Counters) -> dict:
    d = c.as_dict()
    return {k: d[k] for k in ("reads", "read_bytes", "writes", "write_bytes", "read_sizes", "write_sizes")}


def test_requests_from_many_threads_are_each_counted_once() -> None:
    c = Counters()
    plans = [[(random.Random(t * 7 + i).choice(("read", "write")), random.Random(i + t).choice(SIZES))
              for i in range(3 * FOLD_AT + 17)] for t in range(8)]
    start = threading.Barrier(len(plans))

    def run(plan: list[tuple[str, int]]) -> None:
        start.wait()
        for kind, size in plan:
            c.request(kind, size)

    threads = [threading.Thread(target=run, args=(p,)) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [r for p in plans for r in p]
    assert _seen(c) == _expected(everything)
    assert (c.reads, c.writes) == (_expected(everything)["reads"], _expected(everything)["writes"])


def test_a_reader_sees_what_was_counted_before_it_asked() -> None:
    c = Counters()
    c.request("read", 4096)
    assert (c.reads, c.read_bytes, c.writes) == (1, 4096, 0)  # one request, far below a fold
    c.request("write", 1 << 20)
    assert (c.writes, c.write_bytes) == (1, 1 << 20)
    assert c.as_dict()["write_sizes"] == {"1M": 1} and c.as_dict()["read_sizes"] == {"4K": 1}


def test_readers_during_counting_never_see_a_total_go_back() -> None:
    c = Counters()
    stop = threading.Event()
    seen: list[int] = []

    def watch() -> None:
        while not stop.is_set():
            seen.append(c.reads)
            seen.append(c.as_dict()["reads"])

    w = threading.Thread(target=watch)
    w.start()
    try:
        for _ in range(5 * FOLD_AT):
            c.request("read", 4096)
    finally:
        stop.set()
        w.join()
    assert seen == sorted(seen) and c.reads == 5 * FOLD_AT and c.read_bytes == 5 * FOLD_AT * 4096


def test_unread_counts_wait_in_a_bounded_queue() -> None:
    c = Counters()
    for _ in range(10 * FOLD_AT):
        c.request("write", 4096)
    # Nobody read the totals, yet they hold all but fewer than FOLD_AT requests.
    assert 10 * FOLD_AT - FOLD_AT < c._write.count <= 10 * FOLD_AT
    assert c.writes == 10 * FOLD_AT


def test_other_counters_keep_their_names_in_the_status(tmp_path) -> None:
    st = Store.open(make_pool(tmp_path))
    try:
        vid = st.create_volume("v", 1 << 20).id
        st.write(vid, 0, b"x" * 4096)
        st.read(vid, 0, 4096)
        st.trim(vid, 0, 4096)
        d = st.stats.as_dict()
        assert (d["writes"], d["write_bytes"], d["reads"], d["read_bytes"], d["trims"]) == (1, 4096, 1, 4096, 1)
        assert not [k for k in d if k.startswith("_")], d  # no internal field leaks into the status
    finally:
        st.close()


def test_a_wait_for_reads_is_woken_by_the_last_read_to_end(tmp_path) -> None:
    st = Store.open(make_pool(tmp_path))
    try:
        with st.locked():
            st._active_reads += 2  # two reads in flight, as the read paths count them
        woken = threading.Event()

        def wait() -> None:
            with st.locked():
                st.wait_for_reads()
            woken.set()

        t = threading.Thread(target=wait)
        t.start()
        assert not woken.wait(0.2)
        st.done_reading()
        assert not woken.wait(0.2)  # one read still in flight
        st.done_reading()
        assert woken.wait(5.0)  # the last one woke the waiter
        t.join()
        assert st._read_waiters == 0
    finally:
        st.close()


def test_per_volume_rows_count_every_request_of_many_threads_once() -> None:
    io = VolumeIO()
    plans = [[(1 + (t + i) % 3, ("read", "write")[i % 2], 4096 * (1 + i % 4), (i % 7) * 0.001)
              for i in range(2 * FOLD_AT + 5)] for t in range(6)]
    start = threading.Barrier(len(plans))

    def run(plan: list[tuple[int, str, int, float]]) -> None:
        start.wait()
        for r in plan:
            io.record(*r)

    threads = [threading.Thread(target=run, args=(p,)) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    want: dict[tuple[int, str], list] = {}
    for vid, kind, size, seconds in (r for p in plans for r in p):
        row = want.setdefault((vid, kind), [0, 0, 0.0] + [0] * (len(LATENCY_BOUNDS) + 1))
        row[0] += 1
        row[1] += size
        row[2] += seconds
        row[3 + sum(1 for b in LATENCY_BOUNDS if b < seconds)] += 1
    got = io.snapshot()
    assert got.keys() == want.keys()
    for key, row in want.items():
        assert got[key][:2] == row[:2] and got[key][3:] == row[3:] and abs(got[key][2] - row[2]) < 1e-6, key
