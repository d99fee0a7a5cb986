"""Replication between two arrays in the DR lab: what only real daemons in network namespaces
show. TLS over TCP between namespaces, a link cut seen by real socket timeouts, kill -9 of a
daemon under a cross-volume workload written through FUSE, the CLI's one-line errors and
progress bar, certificate refusals. The protocol's behaviour under faults (short and long
cuts, tampered and lost frames, write failures, journal overflow, PFUL, split modes, key
mismatch, planned swaps) is tested in one process: tests/test_replication_inproc.py."""

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
    make_lab,
    make_sites,
    same_images,
    setup_group,
    start_workload,
    status,
    stop_workload,
    teardown,
    wait_for,
)

from vm.lab import Lab  # noqa: E402
from vstor.replication.pki import init_ca, issue  # noqa: E402

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, str]]:
    """One lab and CA for the module: each test brings its own arrays."""
    made: list = []
    try:
        yield make_lab(tmp_path_factory.mktemp("lab"), made)
    finally:
        teardown(made)


@pytest.fixture
def sites(tmp_path: Path, lab: tuple[Lab, str]) -> Iterator[Sites]:
    made: list = []
    try:
        yield make_sites(tmp_path, made, shared=lab)
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



def test_kill9_secondary_catches_up_consistent(sites: Sites, tmp_path: Path):
    a, b = sites.a, sites.b
    setup_group(a)
    sites.pair("g")
    progress = tmp_path / "progress"
    wl = start_workload(a, progress, 60)
    try:
        wait_for(lambda: status(b, "g")["applied_seq"] > 200, 30, "B applies the workload's records")
        b.kill9()
        wait_for(lambda: not status(a, "g")["connected"], 30, "A sees B gone")
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
    wait_for(lambda: status(b, "g")["applied_seq"] > 200, 30, "B applies the workload's records")
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
    for i in range(2):  # there and back (more swaps: test_replication_inproc)
        prim, sec = arrays[i % 2], arrays[(i + 1) % 2]
        _write(prim.image("orders"), i * 4096, f"swap {i}".encode().ljust(4096, b"-"))
        _write(prim.image("payments"), i * 4096, os.urandom(4096))
        sec.vstor("pair", "takeover", "g")
        assert status(sec, "g")["role"] == "primary" and status(prim, "g")["role"] == "secondary"
        wait_for(lambda s=sec: drained(s), 30, f"drained after swap {i}")
        same_images(prim, sec, ["orders", "payments"])
        one_error_line(sec.vstor("pair", "takeover", "g", check=False), "takeover on the primary")
    gens = {status(x, "g")["generation"] for x in arrays}
    assert gens == {3}


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






def test_bandwidth_cap_split_and_progress_bar(sites: Sites):
    a, b = sites.a, sites.b
    setup_group(a, "64M")
    _write(a.image("orders"), 0, os.urandom(6 << 20))
    b.vstor("pair", "create", "g", "--secondary", "--peer", sites.endpoint("a"), "--peer-name", "site-a")
    # --wait on a terminal draws a progress bar until PAIR
    t0 = time.monotonic()
    proc = subprocess.Popen(["script", "-qec", f"{VSTOR} pair create g --peer {sites.endpoint('b')} --peer-name "
                             "site-b --bandwidth 4MB/s --journal-limit 16M --wait", "/dev/null"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=a.env)
    wait_for(lambda: '"COPY"' in a.vstor("pair", "status", "--json").stdout, 30, "the initial copy runs")
    _write(a.image("orders"), 1 << 20, b"written during the copy".ljust(4096, b"."))  # still writable
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "pair g copy: " in out and "100%|" in out and "PAIR" in out
    assert time.monotonic() - t0 >= 0.7 * (6 << 20) / (4 << 20), "the bandwidth cap was not applied"
    wait_for(lambda: drained(a), 60, "drained")
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
