"""Replication in one process: two real stores paired over an in-memory network (memlink)
with the injected clock; no root, no namespaces, no sleeps. Copy, shipping, link faults,
journal overflow, bandwidth cap, roles and crashes of either side."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from replmem import MiB, Pairing, make_pairing, wait_until  # noqa: E402

from vstor.errors import AlreadyExists, Busy, NotFound, ReadOnly, UsageError, VstorError  # noqa: E402
from vstor.faults import Faults  # noqa: E402
from vstor.replication.handshake import PeerRefused  # noqa: E402
from vstor.store.catalog import snapshots  # noqa: E402

pytestmark = pytest.mark.usefixtures("pool_backend")  # each test on a local and a RADOS pool (tests/poolsite.py)


@pytest.fixture
def p(tmp_path: Path) -> Iterator[Pairing]:
    pairing = make_pairing(tmp_path)
    try:
        yield pairing
    finally:
        pairing.close()


def test_initial_copy_then_journal_shipping(p: Pairing):
    a, b = p.a, p.b
    a.write("orders", 0, os.urandom(3 * MiB))
    a.write("payments", 5 * MiB, os.urandom(MiB))
    p.pair()
    assert a.status()["copy"]["total"] == 4 * MiB  # only allocated data
    for i in range(20):
        a.write("orders", i * 65536, os.urandom(4096))
        a.write("payments", i * 8192, os.urandom(8192))
    p.wait_drained()
    p.same()
    assert b.repl.pairs["g"].consistent and b.state() == "PAIR"
    # a slow link: every frame takes 2 s of the clock; the records arrive only when that has passed
    p.net.delay = 2.0
    t0 = p.clock.monotonic()
    a.write("orders", 7 * MiB, os.urandom(4096))
    p.tick_until(p.drained, "drained over the slow link")
    assert p.clock.monotonic() - t0 >= 2.0
    p.same()


def snapshot_names(site) -> list[str]:  # noqa: ANN001
    return [s["name"] for s in snapshots.listing(site.store, "g")]


def test_link_cut_short_holds_long_suspends_then_delta_resync(p: Pairing):
    a, b = p.a, p.b
    p.pair(suspend_after=4.0, compress="lz4")
    a.write("orders", 0, os.urandom(MiB))
    p.wait_drained()
    p.tick(1)
    p.net.cut()
    a.write("orders", 2 * MiB, os.urandom(256 << 10))  # queued while the link is down
    p.tick(3)
    assert a.state() == "PAIR"  # a short outage only queues records
    p.net.heal()
    p.wait_drained()
    p.same()
    at_cut = b.read("orders"), b.read("payments")
    t_cut = p.clock.monotonic()
    p.net.cut()
    p.tick_until(lambda: a.state() == "PSUE", "PSUE after a long outage")  # silence 5 s, then 4 s down
    assert p.clock.monotonic() - t_cut >= 9.0
    assert "unreachable" in a.status()["reason"]
    a.write("orders", 4 * MiB, os.urandom(2 * MiB))  # written while suspended: the host is not held up
    p.net.heal()
    assert (b.read("orders"), b.read("payments")) == at_cut  # B stays at its last applied point
    p.tick_until(lambda: a.status()["dirty_bytes"] >= 2 * MiB, "unsent records folded into the bitmap")
    st = a.status()
    sent_before = st["bytes_sent"]
    a.repl.resync("g")
    p.wait_drained()
    sent = a.status()["bytes_sent"] - sent_before
    assert 2 * MiB <= sent < 2 * st["dirty_bytes"] + MiB, f"resync sent {sent} bytes for {st['dirty_bytes']} dirty"
    p.same()
    assert "before-resync" in " ".join(snapshot_names(b))  # B keeps a consistent copy during the resync


def test_tampered_and_lost_frames_suspend_then_resync(p: Pairing):
    a, b = p.a, p.b
    p.pair()
    faults = ((lambda: p.net.corrupt_next(sender=a.name), "checksum"),  # in the network
              (lambda: p.net.drop_next(sender=a.name), "frame number"),
              (lambda: a.faults.arm("repl.tamper", "torn"), "checksum"))  # the sender's fault point (VSTOR_FAULTS)
    for fault, word in faults:
        fault()
        a.write("orders", 0, os.urandom(64 << 10))
        # a lost frame shows at the next one (a ping, when nothing else is sent)
        p.tick_until(lambda: a.state() == "PSUE" and b.state() == "PSUE", f"PSUE after a bad frame ({word})")
        assert word in b.status()["reason"] and word in a.status()["reason"], (a.status(), b.status())
        a.repl.resync("g")
        p.wait_drained()
        p.same()
    # a bad frame from the secondary: the primary drops the connection and redials; no suspension
    dials = p.net.dials
    p.net.corrupt_next(sender=b.name)
    a.write("orders", 0, os.urandom(64 << 10))
    p.tick_until(lambda: p.net.dials > dials and p.drained(), "reconnected and drained")
    assert a.state() == "PAIR"
    p.same()


def test_write_failure_at_the_secondary_suspends(tmp_path: Path):
    p = make_pairing(tmp_path, b_faults=Faults("repl.apply=enospc@5"))
    try:
        p.pair()
        for i in range(10):
            p.a.write("payments", i * 4096, os.urandom(4096))
        # the REFUSE saying so usually arrives; when the primary's next send meets the closed
        # connection first, the redial (on the clock) hears it again
        p.tick_until(lambda: p.a.state() == "PSUE", "PSUE after the secondary's write error")
        assert "No space" in p.a.status()["reason"] or "ENOSPC" in p.a.status()["reason"]
        p.a.write("payments", 0, b"the primary is unaffected".ljust(4096))
        p.a.repl.resync("g")
        p.wait_drained()
        p.same()
    finally:
        p.close()


def test_a_suspended_secondary_refuses_a_primary_that_missed_its_refusal(tmp_path: Path):
    p = make_pairing(tmp_path)
    try:
        p.pair()
        p.a.write("payments", 0, os.urandom(4096))
        p.wait_drained()
        p.b.faults.arm("repl.apply", "enospc")
        p.net.drop_next(sender=p.b.name)  # the REFUSE is lost with its connection
        p.a.write("payments", 4096, os.urandom(4096))
        wait_until(lambda: p.b.state() == "PSUE", "the secondary suspends")
        p.tick_until(lambda: p.a.state() == "PSUE", "the primary hears of it at its redial")
        reason = p.a.status()["reason"]
        assert "the secondary is suspended (PSUE): cannot apply" in reason and "ENOSPC" in reason, reason
        assert "'vstor pair resync g'" in reason, reason
        p.b.faults.disarm()
        p.a.repl.resync("g")
        p.wait_drained()
        p.same()
    finally:
        p.close()


def test_encryption_keys_must_match(tmp_path: Path):
    p = make_pairing(tmp_path, encrypt=True)
    try:
        p.b.repl.create("g", p.a.address, p.a.name, None, True)
        with pytest.raises(PeerRefused, match="encryption keys differ"):
            p.a.repl.create("g", p.b.address, p.b.name, None, False)
        assert "g" not in p.a.repl.pairs
    finally:
        p.close()


def test_journal_overflow_suspends_then_delta_resync(p: Pairing):
    a, b = p.a, p.b
    p.pair(journal_limit=2 * MiB, suspend_after=300.0)
    p.net.cut()
    region = os.urandom(512 << 10)
    for _ in range(8):  # 4 MiB of writes into the same 512 KiB
        a.write("orders", MiB, region)
    wait_until(lambda: a.state() == "PSUE", "PSUE on journal overflow")
    assert "journal overflow" in a.status()["reason"]
    p.net.heal()
    p.tick_until(lambda: a.status()["dirty_bytes"] >= 512 << 10, "unsent records in the bitmap")
    before = a.status()["bytes_sent"]
    a.repl.resync("g")
    p.wait_drained()
    sent = a.status()["bytes_sent"] - before
    assert (512 << 10) <= sent < (1536 << 10), f"resync sent {sent} bytes for 512 KiB dirty"
    p.same()
    assert any(n.startswith("before-resync") for n in snapshot_names(b))


def test_bandwidth_cap_pful_and_split_modes(p: Pairing):
    a, b = p.a, p.b
    a.write("orders", 0, os.urandom(MiB))
    t0 = p.clock.monotonic()
    p.pair(bandwidth=MiB, journal_limit=4 * MiB)
    assert p.clock.monotonic() - t0 >= 0.7  # the copy was paced: 1 MiB at 1 MiB/s (less a 1/4 s burst)
    p.tick(1)
    p.net.cut()  # the backlog stays: the secondary acknowledges nothing while the link is cut
    t0 = p.clock.monotonic()
    a.write("payments", 0, os.urandom(3 * MiB + (512 << 10)))  # 3.5 MiB: over 80% of the 4 MiB allowance
    wait_until(lambda: a.state() == "PFUL", "PFUL above 80% of the journal allowance")
    wait_until(lambda: a.shipper().sent_seq >= a.repl.applied(a.repl.pairs["g"]), "the backlog is sent")
    paced = p.clock.monotonic() - t0
    assert 0.7 * 3.5 <= paced <= 1.3 * 3.5, f"3.5 MiB at 1 MiB/s took {paced:.2f}s on the clock"
    p.net.heal()
    p.tick(1)
    p.wait_drained()
    p.tick_until(lambda: a.state() == "PAIR", "back to PAIR once the journal is freed")
    p.same()
    # split --flush drains first: B equals A at the split
    a.write("orders", 2 * MiB, os.urandom(256 << 10))
    a.repl.split("g", "flush")
    wait_until(lambda: b.state() == "PSUS", "the secondary follows the split")
    assert a.state() == "PSUS"
    wait_until(lambda: "g" not in b.repl.sessions, "the primary hangs up after the split (no timeout waited)")
    p.same()
    a.write("orders", 4 * MiB, os.urandom(MiB))  # tracked while split
    p.tick_until(lambda: a.status()["dirty_bytes"] == MiB, "the split's changes in the bitmap")
    a.repl.resync("g")
    p.wait_drained()
    p.same()
    # split --flush cannot drain without the peer; --purge splits at once
    p.net.cut()
    p.tick(6)  # the shipper notices the silence
    a.write("orders", 6 * MiB, os.urandom(MiB))
    with pytest.raises(VstorError, match="--purge"):
        a.repl.split("g", "flush")
    a.repl.split("g", "purge")
    assert a.state() == "PSUS"
    p.net.heal()
    p.tick_until(lambda: a.status()["dirty_bytes"] >= MiB, "the purged records in the bitmap")
    a.repl.resync("g")
    p.wait_drained()
    p.same()


def takeover_while_ticking(p: Pairing, site, **kw: object) -> None:  # noqa: ANN001
    """A planned takeover waits for frames from the primary: keep the clock (and pings) going."""
    with ThreadPoolExecutor(1) as ex:
        fut = ex.submit(site.repl.takeover, "g", False, 30.0)
        while not fut.done():
            p.tick(0.5)
            wait([fut], timeout=0.01)
        fut.result()


def test_planned_swap_loop(p: Pairing):
    p.pair()
    sites = [p.a, p.b]
    for i in range(3):
        prim, sec = sites[i % 2], sites[(i + 1) % 2]
        prim.write("orders", i * 4096, f"swap {i}".encode().ljust(4096, b"-"))
        prim.write("payments", i * 4096, os.urandom(4096))
        takeover_while_ticking(p, sec)
        assert sec.repl.pairs["g"].role == "primary" and prim.repl.pairs["g"].role == "secondary"
        p.wait_drained()
        p.same()
        with pytest.raises(UsageError, match="runs on the secondary"):
            sec.repl.takeover("g", False)
        with pytest.raises(ReadOnly):
            prim.write("orders", 0, b"x" * 4096)  # the new secondary is fenced
    assert {s.repl.pairs["g"].generation for s in sites} == {4}


def test_kill_primary_forced_takeover_split_brain_then_failback(p: Pairing):
    a, b = p.a, p.b
    p.pair()
    a.write("orders", 0, os.urandom(MiB))
    p.wait_drained()
    a.write("orders", 2 * MiB, b"A's last write".ljust(4096, b"a"))  # may or may not reach B
    a.crash()
    wait_until(lambda: not b.repl.sessions, "B sees the primary gone")
    with pytest.raises(Busy, match="--force"):
        b.repl.takeover("g", False)
    assert b.repl.takeover("g", True)["state"] == "SSWS"
    b.write("orders", 3 * MiB, b"written at B after the takeover".ljust(4096, b"."))
    a.open()  # the old primary returns: both are primary -> split brain at both sites
    wait_until(lambda: a.state() == "SPLIT_BRAIN" and b.state() == "SPLIT_BRAIN", "split brain at both sites")
    with pytest.raises(Busy, match="SPLIT_BRAIN: 'split' is not possible"):
        a.repl.split("g", "purge")
    b.repl.failback("g")
    p.tick_until(lambda: a.repl.pairs["g"].role == "primary" and a.state() == "PAIR" and b.state() == "PAIR",
               "roles restored after failback")
    p.wait_drained()
    p.same()
    assert a.read("orders", 3 * MiB, 4096).startswith(b"written at B after the takeover.")
    assert any(n.startswith("diverged-") for n in snapshot_names(a))  # the victim's own data is kept


def test_split_brain_resolved_by_resync_on_the_winner(p: Pairing):
    a, b = p.a, p.b
    p.pair(suspend_after=60.0)
    p.net.cut()
    b.repl.takeover("g", True)
    a.write("orders", 0, b"A wrote this".ljust(4096, b"a"))
    b.write("orders", 4096, b"B wrote this".ljust(4096, b"b"))
    p.net.heal()
    p.tick_until(lambda: a.state() == "SPLIT_BRAIN" and b.state() == "SPLIT_BRAIN", "split brain at both sites")
    a.repl.resync("g")  # the operator chooses: A's data wins, B is the victim
    wait_until(lambda: p.drained() and b.repl.pairs["g"].role == "secondary", "resolved: A primary, PAIR")
    p.same()
    assert b.read("orders", 0, 4096).startswith(b"A wrote this")
    kept = [n for n in snapshot_names(b) if n.startswith("diverged-")]
    assert kept, "the victim keeps its diverged data in a snapshot"


def test_kill_secondary_then_it_catches_up(p: Pairing):
    a, b = p.a, p.b
    p.pair(suspend_after=60.0)
    a.write("orders", 0, os.urandom(MiB))
    p.wait_drained()
    b.crash()
    for i in range(16):
        a.write("payments", i * 65536, os.urandom(65536))
    p.tick(2)  # the primary redials and backs off
    assert a.state() == "PAIR"
    b.open()
    assert b.state() == "PAIR" and b.repl.pairs["g"].consistent
    p.tick_until(p.drained, "B catches up")  # the backoff ends; the shipper redials, resends from its consumer
    p.same()


def test_kill_primary_mid_copy_restarts_the_copy(p: Pairing):
    a, b = p.a, p.b
    a.write("orders", 0, os.urandom(2 * MiB))
    b.repl.create("g", a.address, a.name, None, True)
    a.repl.create("g", b.address, b.name, None, False, bandwidth=MiB)
    wait_until(lambda: a.shipper() is not None and a.shipper().copy_done >= 512 << 10, "the copy runs")
    a.crash()
    assert b.state() == "COPY" and not b.repl.pairs["g"].consistent  # not promotable mid-copy
    with pytest.raises(Busy, match="not consistent"):
        b.repl.takeover("g", True)
    a.open()
    assert a.state() == "COPY"
    p.tick_until(lambda: a.state() == "PAIR" and b.state() == "PAIR", "the copy completes after the restart")
    p.wait_drained()
    p.same()


def test_refusals_status_and_delete(p: Pairing):
    a, b = p.a, p.b
    with pytest.raises(PeerRefused, match="no pair for group"):
        a.repl.create("g", b.address, b.name, None, False)
    assert "g" not in a.repl.pairs
    p.pair()
    with pytest.raises(AlreadyExists):
        a.repl.create("g", b.address, b.name, None, False)
    with pytest.raises(UsageError, match="runs on the secondary"):
        a.repl.takeover("g", False)
    with pytest.raises(UsageError, match="runs on the primary"):
        b.repl.split("g", "flush")
    with pytest.raises(Busy, match="paired"):
        a.repl.guard(a.store.state.catalog.group("g").id, "add volumes")
    with pytest.raises(ReadOnly):
        b.write("orders", 0, b"x" * 4096)
    a.write("orders", 0, os.urandom(4096))
    p.wait_drained()
    st = a.status()
    assert st["connected"] and st["lag_records"] == 0 and st["role"] == "primary"
    assert b.status()["connected"] and b.status()["applied_seq"] == st["seq"]
    a.repl.delete("g")
    wait_until(lambda: "g" not in b.repl.pairs, "the secondary deletes its side too")
    b.write("orders", 0, b"x" * 4096)  # writable again
    with pytest.raises(NotFound):
        a.repl.status("g")
