"""Shared CLI plumbing: pool resolution, talking to the daemon or working offline, output."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from vstor.control.host.lock import PoolLock, daemon_pid
from vstor.control.protocol import DEFAULT_TIMEOUT, call
from vstor.errors import NotRunning, UsageError
from vstor.store.superblock import layout, load_superblock
from vstor.units import format_size


def add_pool_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", default=os.environ.get("VSTOR_POOL"),
                   help="pool directory (default: $VSTOR_POOL)")


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of text")


def add_timeout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, metavar="SECONDS", dest="call_timeout",
                   help="how long to wait for the daemon's answer; 0: no limit (default: as long as the "
                        "daemon reports progress, for operations that do, like volume resize, snapshot "
                        f"rollback or media load; {DEFAULT_TIMEOUT:g} for others)")


def subcommand(group: argparse._SubParsersAction, name: str, func: object, help_: str) -> argparse.ArgumentParser:
    """A subcommand with the common options: --pool, --json and --timeout."""
    p = group.add_parser(name, help=help_)
    add_pool_arg(p)
    add_timeout_arg(p)
    add_json_arg(p)
    p.set_defaults(func=func)
    return p


_wait: dict[str, float | None] = {"timeout": None}  # the running command's --timeout, if given
_auth: dict[str, Any] = {}  # the running command's --as and --otp, if given (governance)
EXIT_PENDING = 16  # a destructive request now waits for a second admin's approval: it has not run


def add_admin_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    """--as NAME --otp CODE: the enrolled admin a governed change is made as (see 'vstor admin')."""
    p.add_argument("--as", dest="as_admin", metavar="NAME", required=required,
                   help="the enrolled admin making this change (needed once any admin is enrolled)")
    p.add_argument("--otp", metavar="CODE", required=required,
                   help="that admin's current 6-digit one-time code from their authenticator app")


def pool_path(args: argparse.Namespace) -> str:
    """The pool the command names. Also takes its --timeout (if it has one) for the requests
    that follow: every command resolves its pool first."""
    if not args.pool:
        raise UsageError("no pool given: use --pool PATH or set VSTOR_POOL")
    if args.pool.startswith("rados://"):  # its state directory on this host (vstor/store/backend/stub.py)
        from vstor.store.backend.stub import resolve
        args.pool = resolve(args.pool)
    from vstor.store.backend.stub import read_stub
    if read_stub(args.pool) is None:  # a RADOS pool's stub says it is one, without asking the cluster
        load_superblock(args.pool)  # a clear error if it is not a pool
    _wait["timeout"] = getattr(args, "call_timeout", None)
    _auth.clear()
    if getattr(args, "as_admin", None) or getattr(args, "otp", None):
        _auth.update({"as": args.as_admin, "otp": args.otp})
    _auth["json"] = bool(getattr(args, "json", False))
    return os.path.abspath(args.pool)


def daemon_running(pool: str) -> bool:
    return daemon_pid(pool) is not None


def request(pool: str, op: str, key_file: str | None = None, progress: bool = False, **kw: Any) -> Any:
    """Run ``op`` on the daemon if it runs, else offline under the pool lock. ``progress``: the
    operation reports progress (shown on a terminal) and, by default, is waited for without
    a time limit. A governed change carries the command's --as/--otp; one that must wait for
    approval prints the request and exits with EXIT_PENDING."""
    if _auth.get("as") or _auth.get("otp"):
        kw["auth"] = {"as": _auth.get("as"), "otp": _auth.get("otp")}
    return _pending_or(_request(pool, op, key_file, progress, **kw))


def _pending_or(result: Any) -> Any:
    if not (isinstance(result, dict) and "approval_request" in result):
        return result
    r = result["approval_request"]
    if _auth.get("json"):
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(f"request {r['id']} ({r['op']}) by {r['requester']} waits for a second admin's approval until "
              f"{when(r['expires'])} UTC; it has not run. Another admin approves it with "
              f"'vstor admin approve {r['id']} --as NAME --otp CODE'")
    sys.stdout.flush()
    raise SystemExit(EXIT_PENDING)


def _request(pool: str, op: str, key_file: str | None = None, progress: bool = False, **kw: Any) -> Any:
    if daemon_running(pool):
        return daemon_request(pool, op, progress, **kw)
    from vstor.control.service import PoolService  # offline only: the client path stays light
    from vstor.store.store import Store

    with PoolLock(pool):
        store = Store.open(pool, key_file)
        service = PoolService(store)
        try:
            with ProgressBar(op if progress else "") as meter:
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
    # An operation that reports progress is waited for as long as the daemon sends progress lines
    # (every second); only a daemon silent for DEFAULT_TIMEOUT ends the wait. --timeout overrides.
    idle = DEFAULT_TIMEOUT if progress and limit is None else None
    with ProgressBar(op if progress else "") as meter:
        return call(layout(pool)["socket"], op, timeout=timeout, idle=idle,
                    progress=(lambda p: meter.step(p.get("done", 0), p.get("total", 0))) if progress else None,
                    **kw)


class ProgressBar:
    """The progress of a long operation as a tqdm bar on stderr, only when stderr is a terminal
    (nothing is printed otherwise). ``step(done, total)`` moves it; until a total is known (an
    operation that only sends keep-alive lines) it shows the time waited so far."""

    KNOWN = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}{postfix}"
    UNKNOWN = "{desc}: {elapsed}{postfix}"

    def __init__(self, what: str, file: Any = None, tty: bool | None = None) -> None:
        self.file = sys.stderr if file is None else file
        self.what = what if what and (self.file.isatty() if tty is None else tty) else ""
        self.bar: Any = None

    def __enter__(self) -> ProgressBar:
        return self

    def step(self, done: int, total: int) -> None:
        if not self.what:
            return
        if self.bar is None:
            from tqdm import tqdm  # only here: most commands draw no bar and start faster

            self.bar = tqdm(desc=self.what, file=self.file, bar_format=self.UNKNOWN, mininterval=0,
                            leave=True, **self._size())
        if total:
            self.bar.bar_format = self.KNOWN
            self.bar.total, self.bar.n = total, min(done, total)
        self.bar.refresh()

    def _size(self) -> dict[str, int]:
        """The terminal's size for tqdm, 80x24 where it reports none (a pty under script(1)), as
        tqdm would draw nothing at all in 0x0; tqdm's defaults for what is not a terminal file."""
        try:
            size = os.get_terminal_size(self.file.fileno())
        except (OSError, ValueError, AttributeError):
            return {}
        return {"ncols": size.columns or 80, "nrows": size.lines or 24}

    def note(self, text: str) -> None:
        """A short status after the bar, like the pair's state and lag."""
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


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


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns; the first row is the heading."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)

