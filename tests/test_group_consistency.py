"""Group snapshots cut the group's write order: no snapshot shows a write to volume B
without the write to volume A that the workload completed before it, and every write
acknowledged before a snapshot began is in it. Also under kill -9 of the daemon."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from group_workload import BLOCK, check_images

from vstor.control.protocol import call
from vstor.store.superblock import layout

HERE = Path(__file__).parent
SLOTS = 2048  # 8 MiB of each volume


def _start_workload(arr: object, progress: Path, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "group_workload.py"), arr.image("a"), arr.image("b"),
                             str(progress), "--slots", str(SLOTS), "--seconds", str(seconds)])


def _acked(progress: Path) -> int:
    return struct.unpack("<Q", progress.read_bytes()[:8])[0]


def _check_snapshot(mnt: str, name: str, acked_before: int) -> int:
    """Verify the invariant on one snapshot; returns the newest record it holds."""
    with open(os.path.join(mnt, "snapshots", "g", name, "a"), "rb") as f:
        a = f.read(SLOTS * BLOCK)
    with open(os.path.join(mnt, "snapshots", "g", name, "b"), "rb") as f:
        b = f.read(SLOTS * BLOCK)
    newest = check_images(a, b, SLOTS, f"snapshot {name}")
    assert newest >= acked_before, f"snapshot {name} lacks acknowledged record {acked_before} (newest {newest})"
    return newest


def _snapshot_loop(arr: object, progress: Path, until: float, taken: dict[str, int],
                   enough: tuple[int, int] | None = None) -> None:
    """Snapshot every 0.1 s until ``until``, or sooner once ``enough`` (snapshots, acknowledged
    records) are reached."""
    sock = layout(arr.pool)["socket"]
    n = len(taken)
    while time.monotonic() < until:
        if enough and len(taken) >= enough[0] and _acked(progress) > enough[1]:
            return
        before = _acked(progress)
        name = f"s{n}"
        call(sock, "snapshot.create", owner="g", name=name)
        taken[name] = before
        n += 1
        time.sleep(0.1)


def _setup(arr: object, tmp_path: Path) -> Path:
    arr.create("a", "16M")
    arr.create("b", "16M")
    arr.vstor("group", "create", "g", "--volumes", "a,b")
    progress = tmp_path / "progress"
    progress.write_bytes(bytes(8))
    return progress


@pytest.mark.root
def test_group_snapshots_never_show_b_without_a(array, tmp_path: Path):
    progress = _setup(array, tmp_path)
    wl = _start_workload(array, progress, seconds=60)
    taken: dict[str, int] = {}
    try:
        time.sleep(0.3)
        _snapshot_loop(array, progress, time.monotonic() + 30, taken, enough=(15, 1500))
    finally:
        wl.terminate()  # ends after its current record pair (group_workload.py)
        assert wl.wait(timeout=60) == 0
    assert len(taken) >= 10 and _acked(progress) > 1000
    newest = [_check_snapshot(array.mnt, name, acked) for name, acked in taken.items()]
    assert newest == sorted(newest), "a later snapshot holds fewer writes than an earlier one"
    assert newest[-1] > newest[0], "the workload did not progress between snapshots"


@pytest.mark.root
def test_group_snapshots_stay_consistent_across_kill9(array, tmp_path: Path):
    progress = _setup(array, tmp_path)
    rnd = random.Random(7)
    taken: dict[str, int] = {}
    checked: set[str] = set()
    for _round in range(3):
        wl = _start_workload(array, progress, seconds=30)
        try:
            time.sleep(0.2)
            try:
                _snapshot_loop(array, progress, time.monotonic() + rnd.uniform(1.0, 2.5), taken)
            finally:
                array.kill9()
        finally:
            wl.wait(timeout=60)
        array.start()
        listed = {s["name"] for s in array.vstor_json("snapshot", "list", "g")}
        # Every snapshot whose create returned is durable; one in flight at the kill may exist or not.
        assert set(taken) <= listed, set(taken) - listed
        for name in sorted(listed - set(taken)):
            taken[name] = 0
        for name in sorted(set(taken) - checked):
            _check_snapshot(array.mnt, name, taken[name])
            checked.add(name)
    array.stop()
    r = array.vstor("pool", "check", array.pool, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
