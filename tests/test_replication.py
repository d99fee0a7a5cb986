"""Replication between two arrays in the DR lab: copy, steady state, faults, roles."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from harness import one_error_line, read_direct  # noqa: E402
from replkit import (  # noqa: E402
    Sites,
    acked,
    check_cut,
    drained,
    make_sites,
    same_images,
    setup_group,
    start_workload,
    status,
    teardown,
    wait_for,
)

pytestmark = pytest.mark.root


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Sites]:
    made: list = []
    try:
        yield make_sites(tmp_path, made)
    finally:
        teardown(made)


def _write(path: str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_initial_copy_then_steady_replication(sites: Sites):
    a, b = sites.a, sites.b
    for v in ("orders", "payments"):
        a.create(v, "64M")
    a.vstor("group", "create", "g", "--volumes", "orders,payments")
    _write(a.image("orders"), 0, os.urandom(3 << 20))
    _write(a.image("payments"), 40 << 20, os.urandom(1 << 20))
    sites.pair("g")
    st = status(a, "g")
    assert st["copy"]["total"] == 4 << 20  # only allocated data
    for i in range(20):
        _write(a.image("orders"), i * 65536, os.urandom(4096))
        _write(a.image("payments"), i * 8192, os.urandom(8192))
    wait_for(lambda: drained(a), 60, "the journal drains")
    same_images(a, b, ["orders", "payments"])
    r = b.vstor("volume", "list", "--json")
    assert "orders" in r.stdout


def test_link_cut_short_keeps_pair_long_suspends_then_delta_resync(sites: Sites, tmp_path: Path):
    a, b = sites.a, sites.b
    setup_group(a)
    sites.pair("g", extra=("--suspend-after", "4", "--compress", "lz4"))
    progress = tmp_path / "progress"
    wl = start_workload(a, progress, 30)
    try:
        time.sleep(1)
        sites.lab.cut()
        time.sleep(2)
        assert status(a, "g")["state"] == "PAIR"  # a short outage only queues records
        sites.lab.heal()
        wait_for(lambda: status(a, "g")["lag_seconds"] < 2, 30, "catching up")
        sites.lab.cut()
        wait_for(lambda: status(a, "g")["state"] == "PSUE", 30, "PSUE after a long outage")
        assert "unreachable" in status(a, "g")["reason"]
        assert wl.poll() is None, "the workload must still run during the outage"
    finally:
        wl.wait(60)
    _write(a.image("orders"), 8 << 20, os.urandom(2 << 20))  # written while suspended
    sites.lab.heal()
    newest = check_cut(b, "during-psue")  # B stays consistent at its last applied point
    assert newest <= acked(progress)
    wait_for(lambda: status(a, "g")["dirty_bytes"] >= 2 << 20, 10, "unsent records folded into the bitmap")
    st = status(a, "g")
    assert st["state"] == "PSUE"
    sent_before = st["bytes_sent"]
    a.vstor("pair", "resync", "g")
    wait_for(lambda: drained(a), 60, "resync completes")
    sent = status(a, "g")["bytes_sent"] - sent_before
    assert sent < 3 * st["dirty_bytes"] + (4 << 20), f"resync sent {sent} bytes for {st['dirty_bytes']} dirty"
    same_images(a, b, ["orders", "payments"])
    assert check_cut(b, "after") == acked(progress)


def test_kill9_secondary_catches_up_consistent(sites: Sites, tmp_path: Path):
    a, b = sites.a, sites.b
    setup_group(a)
    sites.pair("g")
    progress = tmp_path / "progress"
    wl = start_workload(a, progress, 12)
    try:
        time.sleep(3)
        b.kill9()
        time.sleep(2)
        b.start()
        assert check_cut(b, "after-restart") <= acked(progress)
    finally:
        wl.wait(60)
    wait_for(lambda: drained(a), 60, "drain after the secondary's restart")
    same_images(a, b, ["orders", "payments"])
    assert status(a, "g")["state"] == "PAIR"


def test_kill9_primary_forced_takeover_then_failback(sites: Sites, tmp_path: Path):
    a, b = sites.a, sites.b
    setup_group(a)
    sites.pair("g")
    progress = tmp_path / "progress"
    wl = start_workload(a, progress, 60)
    time.sleep(4)
    a.kill9()
    wl.wait(60)
    one_error_line(b.vstor("pair", "takeover", "g", check=False), "planned takeover without the primary")
    r = b.vstor("pair", "takeover", "g", "--force", "--json")
    assert '"SSWS"' in r.stdout
    newest = check_cut(b, "after-takeover")  # crash-consistent at some N
    assert newest > 0
    _write(b.image("orders"), 12 << 20, b"written at B after the takeover".ljust(4096, b"."))
    a.start()  # the old primary returns: both are primary -> split brain at both sites
    wait_for(lambda: status(a, "g")["state"] == "SPLIT_BRAIN", 30, "A detects split brain")
    wait_for(lambda: status(b, "g")["state"] in ("SPLIT_BRAIN", "SSWS"), 30, "B sees it too")
    b.vstor("pair", "failback", "g")
    wait_for(lambda: status(a, "g")["role"] == "primary" and status(a, "g")["state"] == "PAIR", 90,
             "roles restored after failback")
    wait_for(lambda: drained(a), 60, "drained after failback")
    same_images(a, b, ["orders", "payments"])
    assert read_direct(a.image("orders"), 12 << 20, 4096).startswith(b"written at B after the takeover.")
    snaps = a.vstor("snapshot", "list", "g").stdout
    assert "diverged-" in snaps  # the victim's own data is kept


def test_planned_swap_loop(sites: Sites):
    a, b = sites.a, sites.b
    setup_group(a, "8M")
    sites.pair("g")
    arrays = [a, b]
    for i in range(5):
        prim, sec = arrays[i % 2], arrays[(i + 1) % 2]
        _write(prim.image("orders"), i * 4096, f"swap {i}".encode().ljust(4096, b"-"))
        _write(prim.image("payments"), i * 4096, os.urandom(4096))
        sec.vstor("pair", "takeover", "g")
        assert status(sec, "g")["role"] == "primary" and status(prim, "g")["role"] == "secondary"
        wait_for(lambda s=sec: drained(s), 30, f"drained after swap {i}")
        same_images(prim, sec, ["orders", "payments"])
        one_error_line(sec.vstor("pair", "takeover", "g", check=False), "takeover on the primary")
    gens = {status(x, "g")["generation"] for x in arrays}
    assert gens == {6}
