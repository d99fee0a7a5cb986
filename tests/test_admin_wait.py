"""The CLI waits for long admin operations instead of timing out: progress lines keep the
control connection alive, --timeout sets a limit, and a timeout says the operation may still
complete (issue #22). In-process: a control server on a Store, a slow step injected with the
``store.admin_step=delay`` fault."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from poolkit import MiB, make_pool

from vstor.cli import common
from vstor.cli.main import main
from vstor.control import protocol, server
from vstor.control.server import ControlServer
from vstor.control.service import PoolService
from vstor.errors import TimedOut
from vstor.faults import Faults
from vstor.store.maps.chunkmap import LEAF_SLOTS
from vstor.store.store import Store
from vstor.store.superblock import layout

GiB = 1 << 30


@pytest.fixture
def served(tmp_path, monkeypatch) -> Iterator[tuple[str, Store]]:
    """A pool served on its control socket, whose shrinks take 4 steps of 0.3 s."""
    pool = make_pool(tmp_path)
    faults = Faults()
    faults.delay = 0.3
    store = Store.open(pool, faults=faults)
    store.STEP_LEAVES = 1
    vid = store.create_volume("z", 1 << 40).id
    span = LEAF_SLOTS * store.sb.chunk_size
    for k in (3, 5, 7, 9, 11):
        store.write(vid, k * span, b"x" * 4096)
    faults.arm("store.admin_step", "delay", 1, repeat=True)
    monkeypatch.setattr(server, "KEEPALIVE", 0.05)
    srv = ControlServer(layout(pool)["socket"], PoolService(store))
    srv.start()
    monkeypatch.setattr(common, "daemon_running", lambda pool: True)
    try:
        yield pool, store
    finally:
        srv.stop()
        store.close()


def test_a_long_operation_sends_progress_and_is_waited_for(served):
    pool, store = served
    seen: list[dict] = []
    t0 = time.monotonic()
    r = protocol.call(layout(pool)["socket"], "volume.resize", timeout=None, progress=seen.append,
                      name="z", size=GiB, allow_shrink=True)
    took = time.monotonic() - t0
    assert r["size"] == GiB and r["allocated"] == 0
    assert took > 1.0  # 4 steps of 0.3 s, far longer than the keep-alive interval
    assert len(seen) >= 5
    done = [p["done"] for p in seen if p]
    assert done == sorted(done) and 0 < done[-1] < (1 << 40) - GiB and seen[-1]["total"] == (1 << 40) - GiB


def test_a_timeout_says_the_operation_may_still_complete(served):
    pool, store = served
    with pytest.raises(TimedOut) as info:
        protocol.call(layout(pool)["socket"], "volume.delete", timeout=0.4, progress=lambda p: None, name="z")
    assert "may still complete" in str(info.value) and "--timeout" in str(info.value)
    _wait_gone(store, "z")


def test_the_cli_waits_without_limit_unless_told(served, monkeypatch, capsys):
    pool, store = served
    monkeypatch.setattr(common, "DEFAULT_TIMEOUT", 0.2)  # shorter than the shrink: not its limit
    assert main(["volume", "show", "z", "--pool", pool]) == 0
    assert main(["volume", "resize", "z", "--size", "2T", "--pool", pool]) == 0  # grow: one step
    capsys.readouterr()
    assert main(["volume", "resize", "z", "--size", "1G", "--allow-shrink", "--pool", pool]) == 0
    assert "is now 1G" in capsys.readouterr().out
    store.write(store.volume("z").id, 100 * MiB, b"y")
    assert main(["volume", "resize", "z", "--size", "1T", "--pool", pool, "--timeout", "0.1"]) == 0
    store.write(store.volume("z").id, (1 << 40) - MiB, b"y")
    for k in (3, 5, 7):
        store.write(store.volume("z").id, k * LEAF_SLOTS * store.sb.chunk_size, b"x")
    assert main(["volume", "delete", "z", "--pool", pool, "--timeout", "0.3"]) == 14
    err = capsys.readouterr().err
    assert err.startswith("vstor: error: no answer from the daemon to volume.delete within 0.3 s; it may still "
                          "complete"), err
    _wait_gone(store, "z")


def _wait_gone(store: Store, name: str) -> None:
    deadline = time.monotonic() + 10
    while store.state.table.find(name) is not None:  # it goes through all the same
        assert time.monotonic() < deadline, f"the delete of {name} did not complete"
        time.sleep(0.05)
