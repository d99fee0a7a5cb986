"""vstor status [--json] [--watch SECONDS]: is my array healthy?"""

from __future__ import annotations

import argparse
import json
import sys
import time

from vstor.cli.common import add_json_arg, add_pool_arg, daemon_request, pool_path, table, when
from vstor.control.host.lock import daemon_pid
from vstor.errors import UsageError
from vstor.units import format_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="one screen: daemon, space, volumes, groups, pairs, libraries, backups, "
                                      "warnings (also for a stopped pool)")
    add_pool_arg(p)
    add_json_arg(p)
    p.add_argument("--watch", type=float, metavar="SECONDS", help="redraw every SECONDS until Ctrl-C")
    p.set_defaults(func=cmd_status)


def gather(pool: str) -> dict:
    """The running daemon's overview, or what the stopped pool's files say."""
    if daemon_pid(pool) is not None:
        return daemon_request(pool, "status.overview")
    from vstor.control.ops.status import offline_overview

    return offline_overview(pool)


def cmd_status(args: argparse.Namespace) -> int:
    pool = pool_path(args)
    if args.watch is None:
        _show(args, gather(pool))
        return 0
    if args.watch <= 0:
        raise UsageError("--watch needs a positive number of seconds")
    clear = sys.stdout.isatty() and not args.json
    try:
        while True:
            s = gather(pool)
            if clear:
                sys.stdout.write("\033[H\033[2J")
            _show(args, s)
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def _show(args: argparse.Namespace, s: dict) -> None:
    print(json.dumps(s, indent=2, sort_keys=True) if args.json else render(s))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, sec = divmod(rest, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{sec:02d}"


def render(s: dict) -> str:
    p = s["pool"]
    out = [f"pool       {p['path']} ({p['uuid']})"]
    if s["running"]:
        d = s["daemon"]
        out.append(f"daemon     running, pid {d['pid']}, up {_duration(d['uptime'])}, mounted at {d['mount']}")
    else:
        run = s.get("last_run")
        last = ("no run recorded in the daemon log" if run is None else
                f"last run pid {run['pid']} started {run['started']}, "
                + (f"stopped cleanly {run['stopped']}" if run["clean"] else "did NOT stop cleanly (killed or crashed)"))
        out.append(f"daemon     stopped; {last}")
    out.append(f"space      {format_size(p['used'], True)} used, {format_size(p['free'], True)} free, "
               f"{format_size(p['provisioned'])} provisioned in volumes: {p['overcommit']:.2f}x the pool's "
               f"{format_size(p['capacity'], True)}")
    ck = s.get("last_check")
    out.append("last check " + ("none recorded" if not ck else
                                f"{when(ck['time'])}: " + ("clean" if ck["clean"] else f"{ck['problems']} problem(s)")
                                + (f", {ck['repairs']} repair(s)" if ck.get("repairs") else "")))
    if not s["running"]:
        cp = s.get("checkpoint")
        out.append("checkpoint " + (f"generation {cp['generation']} (volumes and groups below are as of it)"
                                    if cp else "none valid"))
    if s.get("backup"):
        b = s["backup"]
        last = b["last"]
        out.append("backup     last: " + (f"job {last['id']} {last['policy']} {last['level']} {last['status']} "
                                          f"{when(last.get('ended'))}" if last else "none")
                   + "; next: " + (f"{b['next']['policy']} at {when(b['next']['time'])}" if b["next"] else "none")
                   + (f"; running: {', '.join(str(j['id']) for j in b['running'])}" if b["running"] else ""))
    out += ["", _volumes(s["volumes"], s["running"]), "", _groups(s["groups"])]
    if s.get("pairs"):
        out += ["", _pairs(s["pairs"])]
    if s.get("libraries"):
        out += ["", table([("LIBRARY", "TYPE", "DRIVES", "LOADED")]
                          + [(lib["name"], lib["type"], str(lib["drives"]), ",".join(lib["loaded"]) or "-")
                             for lib in s["libraries"]])]
    out += ["", "warnings   " + ("none" if not s["warnings"] else s["warnings"][0])]
    out += [f"           {w}" for w in s["warnings"][1:]]
    return "\n".join(out)


def _volumes(vols: list[dict], running: bool) -> str:
    if not vols:
        return "no volumes"
    rows = [("VOLUME", "SIZE", "ALLOCATED", "GROUP", "OPEN")]
    for v in vols:
        rows.append((v["name"], format_size(v["size"]),
                     format_size(v["allocated"], True) if running else "-", v["group"] or "-",
                     str(v["open_handles"]) if running else "-"))
    return table(rows)


def _groups(groups: list[dict]) -> str:
    if not groups:
        return "no groups"
    rows = [("GROUP", "VOLUMES", "SNAPSHOTS", "LAST SNAPSHOT")]
    for g in groups:
        last = g["last_snapshot"]
        rows.append((g["name"], ",".join(g["volumes"]) or "-", str(g["snapshots"]),
                     f"{last['name']} ({when(last['created'])})" if last else "-"))
    return table(rows)


def _pairs(pairs: list[dict]) -> str:
    rows = [("PAIR", "ROLE", "STATE", "LAG", "RATE")]
    for r in pairs:
        rows.append((r["group"], r["role"], r["state"] + ("" if r.get("connected") else " (down)"),
                     f"{r.get('lag_seconds', 0):.1f}s/{r.get('lag_records', 0)}r",
                     format_size(int(r.get("throughput", 0))) + "/s"))
    return table(rows)
