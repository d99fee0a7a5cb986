"""vstor pair create | status | split | resync | takeover | failback | delete"""

from __future__ import annotations

import argparse
import time

from vstor.cli.common import ProgressBar, daemon_request, emit, pool_path, subcommand, table
from vstor.errors import UsageError
from vstor.units import format_size, parse_size


def register(sub: argparse._SubParsersAction) -> None:
    pr = sub.add_parser("pair", help="asynchronous replication of a group to a peer array").add_subparsers(
        dest="action", required=True)

    def cmd(name: str, func: object, help_: str, group: bool = True) -> argparse.ArgumentParser:
        p = subcommand(pr, name, func, help_)
        if group:
            p.add_argument("group", metavar="G", help="the consistency group of the pair")
        return p

    p = cmd("create", cmd_create, "pair group G with a peer: on the primary, after '--secondary' on the peer")
    p.add_argument("--peer", required=True, metavar="HOST:PORT", help="the peer's replication endpoint")
    p.add_argument("--peer-name", help="the peer's certificate name (default: HOST)")
    p.add_argument("--peer-group", help="the group's name at the peer (default: G)")
    p.add_argument("--secondary", action="store_true", help="this array receives: accept the pair from the peer")
    p.add_argument("--bandwidth", default="0", help="cap on the wire, like 50MB/s (default: unlimited)")
    p.add_argument("--compress", default="none", choices=["lz4", "none"], help="compress on the wire (default none)")
    p.add_argument("--journal-limit", default="1G", help="journal the pair may hold back before PSUE (default 1G)")
    p.add_argument("--suspend-after", type=float, default=10.0,
                   help="seconds without the peer before PAIR becomes PSUE (default 10)")
    p.add_argument("--wait", action="store_true", help="wait for PAIR, with a progress bar")
    cmd("status", cmd_status, "state, role, generation, lag, journal fill, dirty bytes", group=False).add_argument(
        "group", metavar="G", nargs="?", help="only this group's pair (default: all)")
    p = cmd("split", cmd_split, "suspend replication (PSUS); changes are tracked for resync")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--flush", dest="mode", action="store_const", const="flush", help="drain first (default)")
    mode.add_argument("--purge", dest="mode", action="store_const", const="purge", help="at once")
    p = cmd("resync", cmd_resync, "copy only the changed ranges, then PAIR; in SPLIT_BRAIN: this array wins")
    p.add_argument("--wait", action="store_true", help="wait for PAIR, with a progress bar")
    p = cmd("takeover", cmd_takeover, "on the secondary: planned swap, or --force to promote at once")
    p.add_argument("--force", action="store_true", help="promote at the last applied point without the primary")
    cmd("failback", cmd_failback, "after a forced takeover: delta copy to the old primary, then roles back")
    cmd("delete", cmd_delete, "end the pair (both arrays when connected): the group becomes SIMPLEX")


def _bandwidth(text: str) -> int:
    t = text.strip()
    for suffix in ("/s", "ps"):
        if t.lower().endswith(suffix):
            t = t[: -len(suffix)]
    return parse_size(t, "bandwidth")


def cmd_create(args: argparse.Namespace) -> int:
    pool = pool_path(args)
    if args.suspend_after <= 0:
        raise UsageError("--suspend-after must be positive")
    res = daemon_request(pool, "pair.create", progress=True, group=args.group, peer=args.peer, peer_name=args.peer_name,
                         peer_group=args.peer_group, secondary=args.secondary, bandwidth=_bandwidth(args.bandwidth),
                         compress=args.compress, journal_limit=parse_size(args.journal_limit, "journal limit"),
                         suspend_after=args.suspend_after)
    if args.wait and not args.secondary:
        res = _wait_pair(pool, args.group, args.json)
    emit(args, res, lambda r: f"pair {r['group']}: {r['role']} of {r['peer_name']} at {r['peer']}, {r['state']}")
    return 0


def _wait_pair(pool: str, group: str, quiet: bool) -> dict:
    """Poll the pair's copy (it runs in the daemon) until PAIR, with a progress bar on a
    terminal; returns the final status."""
    with ProgressBar("" if quiet else f"pair {group} copy") as bar:
        while True:
            (st,) = daemon_request(pool, "pair.status", group=group)
            done, total = st.get("copy", {}).get("done", 0), st.get("copy", {}).get("total", 0)
            bar.step(done, total)
            bar.note(f"{st['state']} {format_size(done)}/{format_size(total)} lag {st.get('lag_records', 0)} records")
            if st["state"] not in ("COPY", "RESYNC"):
                if st["state"] not in ("PAIR", "PFUL"):
                    raise UsageError(f"pair {group} stopped in {st['state']}: "
                                     f"{st.get('reason') or st.get('last_error')}")
                return st
            time.sleep(0.5)


def _status_text(rows: list[dict]) -> str:
    if not rows:
        return "no pairs"
    out = [("GROUP", "ROLE", "STATE", "GEN", "PEER", "SEQ", "LAG", "JOURNAL", "DIRTY", "RATE", "NOTE")]
    for r in rows:
        copy = r.get("copy") or {}
        note = r.get("reason") or r.get("last_error") or (
            f"copy {format_size(copy.get('done', 0))}/{format_size(copy.get('total', 0))}"
            if r["state"] in ("COPY", "RESYNC") else "")
        lag = (f"{r.get('lag_seconds', 0):.1f}s/{r.get('lag_records', 0)}r" if r["role"] == "primary"
               else f"{r.get('lag_records', 0)}r")
        out.append((r["group"], r["role"], r["state"] + ("" if r.get("connected") else " (down)"),
                    str(r["generation"]), f"{r['peer_name']}@{r['peer']}", str(r["seq"]), lag,
                    f"{r.get('journal_fill_pct', 0)}%", format_size(r.get("dirty_bytes", 0)),
                    format_size(r.get("throughput", 0)) + "/s", note))
    return table(out)


def cmd_status(args: argparse.Namespace) -> int:
    emit(args, daemon_request(pool_path(args), "pair.status", group=args.group), _status_text)
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    r = daemon_request(pool_path(args), "pair.split", progress=True, group=args.group, mode=args.mode or "flush")
    emit(args, r, lambda r: f"pair {r['group']}: {r['state']}")
    return 0


def cmd_resync(args: argparse.Namespace) -> int:
    pool = pool_path(args)
    r = daemon_request(pool, "pair.resync", progress=True, group=args.group)
    if args.wait:
        r = _wait_pair(pool, args.group, args.json)
    emit(args, r, lambda r: f"pair {r['group']}: {r['state']}")
    return 0


def cmd_takeover(args: argparse.Namespace) -> int:
    r = daemon_request(pool_path(args), "pair.takeover", progress=True,
                       group=args.group, force=args.force)
    emit(args, r, lambda r: f"pair {r['group']}: this array is now the {r['role']} ({r['state']}, generation "
         f"{r['generation']})")
    return 0


def cmd_failback(args: argparse.Namespace) -> int:
    r = daemon_request(pool_path(args), "pair.failback", progress=True, group=args.group)
    emit(args, r, lambda r: f"pair {r['group']}: {r['state']}; roles return to {r['peer_name']} after the copy")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    r = daemon_request(pool_path(args), "pair.delete", group=args.group)
    emit(args, r, lambda r: f"pair {r['group']} deleted: SIMPLEX")
    return 0
