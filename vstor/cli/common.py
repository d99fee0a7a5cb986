"""Shared CLI plumbing: pool resolution, talking to the daemon or working offline, output."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from vstor.control.lock import PoolLock, daemon_pid
from vstor.control.protocol import DEFAULT_TIMEOUT, call
from vstor.errors import NotRunning, UsageError
from vstor.store.superblock import layout, load_superblock
from vstor.units import format_size


def add_pool_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", default=os.environ.get("VSTOR_POOL"),
                   help="pool directory (default: $VSTOR_POOL)")


def add_timeout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, metavar="SECONDS", dest="call_timeout",
                   help="how long to wait for the daemon's answer; 0: no limit (default: no limit for "
                        f"operations that report progress, like volume resize and delete; {DEFAULT_TIMEOUT:g} "
                        "for others)")


def subcommand(group: argparse._SubParsersAction, name: str, func: object, help_: str) -> argparse.ArgumentParser:
    """A subcommand with the common options: --pool, --json and --timeout."""
    p = group.add_parser(name, help=help_)
    add_pool_arg(p)
    add_timeout_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=func)
    return p


_wait: dict[str, float | None] = {"timeout": None}  # the running command's --timeout, if given


def pool_path(args: argparse.Namespace) -> str:
    """The pool the command names. Also takes its --timeout (if it has one) for the requests
    that follow: every command resolves its pool first."""
    if not args.pool:
        raise UsageError("no pool given: use --pool PATH or set VSTOR_POOL")
    load_superblock(args.pool)  # a clear error if it is not a pool
    _wait["timeout"] = getattr(args, "call_timeout", None)
    return os.path.abspath(args.pool)


def daemon_running(pool: str) -> bool:
    return daemon_pid(pool) is not None


def request(pool: str, op: str, key_file: str | None = None, progress: bool = False, **kw: Any) -> Any:
    """Run ``op`` on the daemon if it runs, else offline under the pool lock. ``progress``: the
    operation reports progress (shown on a terminal) and, by default, is waited for without
    a time limit."""
    if daemon_running(pool):
        return daemon_request(pool, op, progress, **kw)
    from vstor.control.service import PoolService  # offline only: the client path stays light
    from vstor.store.store import Store

    with PoolLock(pool):
        store = Store.open(pool, key_file)
        service = PoolService(store)
        try:
            with _Meter(op if progress else "") as meter:
                return service.dispatch(op, kw, meter.step if progress else None)
        finally:
            try:
                service.close()
            finally:
                store.close()


def daemon_request(pool: str, op: str, progress: bool = False, **kw: Any) -> Any:
    if not daemon_running(pool):
        raise NotRunning(f"the array is not running for {pool}; start it with "
                         f"'vstor array start --pool {pool} --mount DIR'")
    limit = _wait["timeout"]
    timeout = (None if progress else DEFAULT_TIMEOUT) if limit is None else (limit or None)
    with _Meter(op if progress else "") as meter:
        return call(layout(pool)["socket"], op, timeout=timeout,
                    progress=(lambda p: meter.step(p.get("done", 0), p.get("total", 0))) if progress else None,
                    **kw)


class _Meter:
    """Progress of a long operation on stderr, when it is a terminal: "volume.delete: 42%"."""

    def __init__(self, what: str) -> None:
        self.what = what if what and sys.stderr.isatty() else ""
        self.shown = False

    def __enter__(self) -> _Meter:
        return self

    def step(self, done: int, total: int) -> None:
        if self.what and total:
            print(f"\r{self.what}: {100 * done // total}%", end="", file=sys.stderr, flush=True)
            self.shown = True

    def __exit__(self, *exc: object) -> None:
        if self.shown:
            print(file=sys.stderr)


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
        rows.append((v["name"], format_size(v["size"]), format_size(v["allocated"], True), v.get("group_name") or "-",
                     str(v.get("open_handles", "-")), v.get("image", "-")))
    return table(rows)


def when(t: float | None) -> str:
    """A time for people: UTC, to the second; "-" for none."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t else "-"


def table(rows: list[tuple[str, ...]]) -> str:
    """Rows as left-aligned columns; the first row is the heading."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)

