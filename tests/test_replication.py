"""Replication between two arrays in the DR lab: copy, steady state, faults, roles."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from harness import VSTOR, one_error_line, read_direct  # noqa: E402
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
    stop_workload,
    teardown,
    wait_for,
)

from vstor.replication.pki import init_ca, issue  # noqa: E402

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
        stop_workload(wl)
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
    wl = start_workload(a, progress, 60)
    try:
        time.sleep(3)
        b.kill9()
        time.sleep(2)
        b.start()
        assert check_cut(b, "after-restart") <= acked(progress)
        restarted = acked(progress)
        wait_for(lambda: acked(progress) > restarted + 200, 30, "the workload goes on after B's restart")
    finally:
        stop_workload(wl)
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


def test_split_brain_detected_at_both_sites_resolved_by_the_operator(sites: Sites):
    a, b = sites.a, sites.b
    setup_group(a, "8M")
    sites.pair("g", extra=("--suspend-after", "60"))
    sites.lab.cut()
    b.vstor("pair", "takeover", "g", "--force")
    _write(a.image("orders"), 0, b"A wrote this".ljust(4096, b"a"))
    _write(b.image("orders"), 4096, b"B wrote this".ljust(4096, b"b"))
    sites.lab.heal()
    wait_for(lambda: status(a, "g")["state"] == "SPLIT_BRAIN" and status(b, "g")["state"] == "SPLIT_BRAIN", 40,
             "split brain at both sites")
    line = one_error_line(a.vstor("pair", "split", "g", check=False), "split during split brain")
    assert "SPLIT_BRAIN" in line or "split" in line
    a.vstor("pair", "resync", "g")  # the operator chooses: A's data wins, B is the victim
    wait_for(lambda: drained(a) and status(b, "g")["role"] == "secondary", 60, "resolved: A primary, PAIR")
    same_images(a, b, ["orders", "payments"])
    assert read_direct(b.image("orders"), 0, 4096).startswith(b"A wrote this")
    snap = [s for s in b.vstor_json("snapshot", "list", "g") if s["name"].startswith("diverged-")]
    assert snap, "the victim keeps its diverged data in a snapshot"
    kept = os.path.join(b.mnt, "snapshots", "g", snap[0]["name"], "orders")
    assert read_direct(kept, 4096, 4096).startswith(b"B wrote this")


def test_refusals_are_logged_and_one_line(sites: Sites, tmp_path: Path):
    a, b = sites.a, sites.b
    setup_group(a, "8M")
    # an unknown peer: B has no pair for g yet
    line = one_error_line(a.vstor("pair", "create", "g", "--peer", sites.endpoint("b"), "--peer-name", "site-b",
                                  check=False), "pair without the secondary's consent")
    assert "no pair for group" in line
    sites.pair("g")
    one_error_line(a.vstor("pair", "create", "g", "--peer", sites.endpoint("b"), check=False), "paired twice")
    one_error_line(a.vstor("pair", "takeover", "g", check=False), "takeover on the primary")
    one_error_line(b.vstor("pair", "split", "g", check=False), "a primary-only command on the secondary")
    one_error_line(a.vstor("group", "add", "g", "x", check=False), "membership change while paired")
    r = b.vstor("volume", "list", "--json")
    assert "orders" in r.stdout
    with pytest.raises(OSError):  # the secondary's volumes are read-only for hosts
        _write(b.image("orders"), 0, b"x" * 4096)
    # other identities: another CA, an expired certificate, a valid one that is not paired
    other = str(tmp_path / "other-ca")
    init_ca(other)
    issue(other, "site-a")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    issue(sites.tls, "old-a", days=1, now=past)
    issue(sites.tls, "site-c")
    for tls, name, expect in ((other, "site-a", "TLS"), (sites.tls, "old-a", "TLS"),
                              (sites.tls, "site-c", "REFUSE")):
        out = _probe(sites, tls, name, "g")
        assert expect in out, (name, out)
    assert "REFUSE" in _probe(sites, sites.tls, "site-a", "other-group")
    log = Path(b.pool, "log", "daemon.log").read_text()
    assert log.count("TLS authentication failed") >= 2
    assert "paired with 'site-a', not with 'site-c'" in log and "no pair for group 'other-group'" in log
    assert status(a, "g")["state"] == "PAIR"


PROBE = """
import sys
from vstor.replication import transport, wire
try:
    c = transport.connect(sys.argv[1], sys.argv[2], sys.argv[3])
    c.send_json(wire.HELLO, {"peer_group": sys.argv[4], "group_at_primary": sys.argv[4], "role": "primary",
                             "generation": 99, "volumes": [], "key_check": ""})
    t, body = c.recv()
    print(wire.TYPE_NAMES[t], body.decode())
except Exception as e:
    print("TLS", type(e).__name__, e)
"""


def _probe(sites: Sites, tls: str, name: str, group: str) -> str:
    r = subprocess.run(sites.lab.command("a", [sys.executable, "-c", PROBE, sites.endpoint("b"), tls, name, group]),
                       capture_output=True, text=True, timeout=60)
    return r.stdout + r.stderr


def test_tampered_frame_suspends_then_resync(sites: Sites):
    a, b = sites.a, sites.b
    setup_group(a, "8M")
    a.stop()
    sites.start("a", env=dict(a.env, VSTOR_FAULTS="repl.tamper=torn@40"))
    sites.pair("g", wait=False)
    for i in range(60):
        _write(a.image("orders"), i * 4096, os.urandom(4096))
    wait_for(lambda: status(a, "g")["state"] == "PSUE", 30, "PSUE after a tampered frame")
    assert "checksum" in status(b, "g")["reason"] + status(a, "g")["reason"]
    assert "checksum mismatch" in Path(b.pool, "log", "daemon.log").read_text()
    a.vstor("pair", "resync", "g")
    wait_for(lambda: drained(a), 60, "resync after the tampered frame")
    same_images(a, b, ["orders", "payments"])


def test_write_failure_at_the_destination(sites: Sites):
    a, b = sites.a, sites.b
    setup_group(a, "8M")
    b.stop()
    sites.start("b", env=dict(b.env, VSTOR_FAULTS="repl.apply=enospc@100"))
    sites.pair("g")  # in PAIR before writing: every write below is a record the secondary applies
    for i in range(200):
        _write(a.image("payments"), i * 4096, os.urandom(4096))
    wait_for(lambda: status(a, "g")["state"] == "PSUE", 30, "PSUE after the secondary's write error")
    assert "No space" in status(a, "g")["reason"] or "ENOSPC" in status(a, "g")["reason"]
    _write(a.image("payments"), 0, b"the primary is unaffected".ljust(4096))  # still writable
    a.vstor("pair", "resync", "g")
    wait_for(lambda: drained(a), 60, "resync after the fix")
    same_images(a, b, ["orders", "payments"])


def test_journal_overflow_suspends_then_delta_resync(sites: Sites):
    a, b = sites.a, sites.b
    setup_group(a, "256M")
    sites.pair("g", extra=("--journal-limit", "48M", "--suspend-after", "300"))
    sites.lab.cut()
    region = os.urandom(8 << 20)
    for _ in range(12):  # 96 MiB of writes into the same 8 MiB
        _write(a.image("orders"), 0, region)
    wait_for(lambda: status(a, "g")["state"] == "PSUE", 40, "PSUE on journal overflow")
    assert "journal overflow" in status(a, "g")["reason"]
    sites.lab.heal()
    wait_for(lambda: status(a, "g")["dirty_bytes"] >= 8 << 20, 10, "unsent records in the bitmap")
    before = status(a, "g")["bytes_sent"]
    a.vstor("pair", "resync", "g")
    wait_for(lambda: drained(a), 60, "delta resync")
    sent = status(a, "g")["bytes_sent"] - before
    assert (8 << 20) <= sent < (12 << 20), f"resync sent {sent} bytes for 8 MiB dirty (volume 256 MiB)"
    same_images(a, b, ["orders", "payments"])
    assert any(s["name"].startswith("before-resync") for s in b.vstor_json("snapshot", "list", "g"))


def test_encryption_keys_must_match(tmp_path: Path):
    made: list = []
    try:
        def init(site: str) -> dict:
            key = tmp_path / f"key-{site}"
            key.write_bytes(os.urandom(32))
            return {"encrypt": True, "key_file": str(key)}

        sites = make_sites(tmp_path, made, init)
        setup_group(sites.a, "8M")
        sites.b.vstor("pair", "create", "g", "--secondary", "--peer", sites.endpoint("a"), "--peer-name", "site-a")
        line = one_error_line(sites.a.vstor("pair", "create", "g", "--peer", sites.endpoint("b"), "--peer-name",
                                            "site-b", check=False), "different keys")
        assert "encryption keys differ" in line
    finally:
        teardown(made)


def test_bandwidth_cap_pful_split_modes_and_progress_bar(sites: Sites):
    a, b = sites.a, sites.b
    setup_group(a, "64M")
    _write(a.image("orders"), 0, os.urandom(6 << 20))
    b.vstor("pair", "create", "g", "--secondary", "--peer", sites.endpoint("a"), "--peer-name", "site-a")
    # --wait on a terminal draws a progress bar until PAIR
    proc = subprocess.Popen(["script", "-qec", f"{VSTOR} pair create g --peer {sites.endpoint('b')} --peer-name "
                             "site-b --bandwidth 4MB/s --journal-limit 16M --wait", "/dev/null"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=a.env)
    wait_for(lambda: '"COPY"' in a.vstor("pair", "status", "--json").stdout, 30, "the initial copy runs")
    _write(a.image("orders"), 1 << 20, b"written during the copy".ljust(4096, b"."))  # still writable
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "pair g copy: " in out and "100%|" in out and "PAIR" in out
    # 14 MiB at 4 MB/s: the backlog crosses 80% of the 16M allowance (PFUL), then drains
    t0 = time.monotonic()
    _write(a.image("payments"), 0, os.urandom(14 << 20))
    wait_for(lambda: status(a, "g")["state"] == "PFUL", 20, "PFUL above 80% of the journal allowance")
    wait_for(lambda: drained(a), 60, "drained back to PAIR")
    assert time.monotonic() - t0 >= 0.7 * (14 << 20) / (4 << 20), "the bandwidth cap was not applied"
    same_images(a, b, ["orders", "payments"])
    # split --flush drains first: B equals A at the split
    _write(a.image("orders"), 8 << 20, os.urandom(1 << 20))
    a.vstor("pair", "split", "g", "--flush")
    assert status(a, "g")["state"] == "PSUS" and status(b, "g")["state"] == "PSUS"
    same_images(a, b, ["orders", "payments"])
    _write(a.image("orders"), 16 << 20, os.urandom(1 << 20))  # tracked while split
    wait_for(lambda: status(a, "g")["dirty_bytes"] == 1 << 20, 10, "the split's changes in the bitmap")
    a.vstor("pair", "resync", "g", "--wait")
    same_images(a, b, ["orders", "payments"])
    # split --purge while the link is down: at once, nothing drained
    sites.lab.cut()
    _write(a.image("orders"), 24 << 20, os.urandom(1 << 20))
    line = one_error_line(a.vstor("pair", "split", "g", "--flush", check=False), "flush without the peer")
    assert "--purge" in line and "internal error" not in line
    a.vstor("pair", "split", "g", "--purge")
    assert status(a, "g")["state"] == "PSUS"
    sites.lab.heal()
    wait_for(lambda: status(a, "g")["dirty_bytes"] >= 1 << 20, 10, "the purged records in the bitmap")
    a.vstor("pair", "resync", "g", "--wait")
    same_images(a, b, ["orders", "payments"])
