"""Part 1: snapshot creation in-process (Store API, no FUSE) against volume size and member count."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Any

from tools.benchlib.procs import best_effort
from tools.benchlib.report import table
from tools.benchlib.timing import Timer
from vstor.control.host.lock import PoolLock
from vstor.control.service import PoolService
from vstor.store.catalog import snapshots
from vstor.store.store import Store
from vstor.store.superblock import init_pool
from vstor.units import format_size

from .common import GIB, LEAF_SPAN, ms, say, summary_us


def touch(store: Store, vid: int, size: int, block: bytes) -> int:
    """One 4 KiB write per 512 MiB region: one map leaf each. Returns the writes done."""
    n = 0
    for off in range(0, size, LEAF_SPAN):
        store.write(vid, off, block)
        n += 1
    return n


def reset_pauses(store: Store) -> None:
    pauses = getattr(store.stats, "snapshot_pauses", None)
    if pauses is not None:
        with store.stats.lock:
            pauses.clear()


def part1(a: argparse.Namespace, workdir: Path, out: dict[str, Any]) -> None:
    say(f"\n== part 1: snapshot creation in-process, {a.reps} snapshots per group")
    pool = str(workdir / "p1-pool")
    init_pool(pool)
    with contextlib.ExitStack() as stack:
        lock = PoolLock(pool)
        lock.acquire("bench_snapshots")
        stack.callback(best_effort("release the part 1 pool lock", lock.release))
        store = Store.open(pool)
        stack.callback(best_effort("close the part 1 store", lambda: store.close(checkpoint=False)))
        svc = PoolService(store)
        block = os.urandom(4096)
        series: list[tuple[str, str, int, int]] = [("size", f"s{format_size(s)}", 1, s) for s in a.sizes]
        series += [("members", f"m{n}x1G", n, 1 * GIB) for n in a.members]
        n, size = a.largest
        series.append(("largest", f"m{n}x{format_size(size)}", n, size))
        rows = out["rows"] = []
        for kind, group, members, size in series:
            vids = []
            writes = 0
            with Timer() as setup:
                for i in range(members):
                    vol = store.create_volume(f"{group}-v{i}", size)
                    vids.append(vol.id)
                    writes += touch(store, vol.id, size, block)
                svc.op_group_create(group, [f"{group}-v{i}" for i in range(members)])
                store.sync()
            setup_s = setup.seconds
            leaves = sum(len(store.state.maps[v].leaves) for v in vids)
            reset_pauses(store)
            times = []
            names = []
            for _ in range(a.reps):
                with Timer() as t:
                    names.append(snapshots.create(store, group)["name"])
                times.append(t.seconds)
            pause = store.stats.as_dict().get("snapshot_pause_us")
            for name in names:  # untimed: the next group starts with the same catalog size
                snapshots.delete(store, group, name)
            row: dict[str, Any] = {
                "series": kind, "group": group, "members": members, "member_size": size, "leaves": leaves,
                "touch_writes": writes, "setup_s": round(setup_s, 2), "create": summary_us(times), "pause_us": pause}
            rows.append(row)
            say(f"   {group:<10} {members:>2} x {format_size(size):>5}, {leaves:>6} leaves: create median "
                f"{ms(row['create']['median_us'])} ms, max {ms(row['create']['max_us'])} ms; lock held p50 "
                f"{ms(pause['p50'] if pause else None)} ms, max {ms(pause['max'] if pause else None)} ms "
                f"(setup {setup_s:.1f} s)")


def render1(out: dict[str, Any]) -> str:
    rows = []
    for r in out.get("rows", []):
        c, p = r["create"], r["pause_us"] or {}
        rows.append([r["series"], r["group"], str(r["members"]), format_size(r["member_size"]), f"{r['leaves']:,}",
                     ms(c["median_us"]), ms(c["max_us"]), ms(p.get("p50")), ms(p.get("p99")), ms(p.get("max"))])
    head = ["series", "group", "members", "size", "leaves", "create med ms", "create max ms",
            "lock p50 ms", "lock p99 ms", "lock max ms"]
    return ("PART 1: snapshot creation vs volume size and member count (in-process Store API; each volume has "
            "one 4 KiB write per 512 MiB = one map leaf per 512 MiB)\n"
            "create = snapshots.create() end to end (includes the journal fsync); lock = how long the store "
            "lock was held (stats snapshot_pause_us), the pause writes see\n" + table(head, rows))
