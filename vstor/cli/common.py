"""Shared CLI plumbing: pool resolution, talking to the daemon or working offline, output."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any

from vstor.control.lock import PoolLock, daemon_pid
from vstor.control.protocol import call
from vstor.errors import NotRunning, UsageError
from vstor.store.superblock import layout, load_superblock
from vstor.units import format_size


def add_pool_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", default=os.environ.get("VSTOR_POOL"),
                   help="pool directory (default: $VSTOR_POOL)")


def subcommand(group: argparse._SubParsersAction, name: str, func: object, help_: str) -> argparse.ArgumentParser:
    """A subcommand with the common options: --pool and --json."""
    p = group.add_parser(name, help=help_)
    add_pool_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=func)
    return p


def pool_path(args: argparse.Namespace) -> str:
    if not args.pool:
        raise UsageError("no pool given: use --pool PATH or set VSTOR_POOL")
    load_superblock(args.pool)  # a clear error if it is not a pool
    return os.path.abspath(args.pool)


def daemon_running(pool: str) -> bool:
    return daemon_pid(pool) is not None


def request(pool: str, op: str, key_file: str | None = None, **kw: Any) -> Any:
    """Run ``op`` on the daemon if it runs, else offline under the pool lock."""
    if daemon_running(pool):
        return call(layout(pool)["socket"], op, **kw)
    from vstor.control.service import PoolService  # offline only: the client path stays light
    from vstor.store.store import Store

    with PoolLock(pool):
        store = Store.open(pool, key_file)
        try:
            return PoolService(store).dispatch(op, kw)
        finally:
            store.close()


def daemon_request(pool: str, op: str, **kw: Any) -> Any:
    if not daemon_running(pool):
        raise NotRunning(f"the array is not running for {pool}; start it with "
                         f"'vstor array start --pool {pool} --mount DIR'")
    return call(layout(pool)["socket"], op, **kw)


def emit(args: argparse.Namespace, result: Any, text: Callable[[Any], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        out = text(result)
        if out:
            print(out)


def volume_table(vols: list[dict]) -> str:
    if not vols:
        return "no volumes"
    rows = [("NAME", "SIZE", "ALLOCATED", "GROUP", "OPEN", "IMAGE")]
    for v in vols:
        rows.append((v["name"], format_size(v["size"]), format_size(v["allocated"]), str(v["group"]),
                     str(v.get("open_handles", "-")), v.get("image", "-")))
    return table(rows)


def table(rows: list[tuple[str, ...]]) -> str:
    """Rows as left-aligned columns; the first row is the heading."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)

