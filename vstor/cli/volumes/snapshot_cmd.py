"""vstor snapshot create | list | delete | rollback | clone | diff | policy"""

from __future__ import annotations

import argparse

from vstor.cli import admin_cmd
from vstor.cli.common import (
    add_admin_args,
    add_json_arg,
    add_pool_arg,
    emit,
    pool_path,
    request,
    subcommand,
    table,
    when,
)
from vstor.control.host.freeze import frozen
from vstor.errors import UsageError
from vstor.units import format_size, parse_duration, parse_size


def register(sub: argparse._SubParsersAction) -> None:
    snap = sub.add_parser("snapshot", help="snapshots of groups and volumes").add_subparsers(
        dest="action", required=True)

    def cmd(name: str, func: object, help_: str, owner: bool = True) -> argparse.ArgumentParser:
        p = subcommand(snap, name, func, help_)
        if owner:
            p.add_argument("owner", metavar="G|VOL", help="a consistency group or a volume")
        return p

    p = cmd("create", cmd_create, "take a snapshot; of a group: one atomic cut of every member")
    p.add_argument("--name", help="default: the UTC time, like 20261122-021500")
    p.add_argument("--freeze", action="append", default=[], metavar="MOUNTPOINT",
                   help="fsfreeze this filesystem (on a volume of the group) around the snapshot, so the "
                        "snapshot is clean, not just crash-consistent; repeatable")
    cmd("list", cmd_list, "list snapshots with their exclusive and shared bytes", owner=False).add_argument(
        "owner", metavar="G|VOL", nargs="?", help="only this group or volume (default: all)")
    p = cmd("delete", cmd_delete, "delete a snapshot, freeing what nothing else references")
    p.add_argument("name", help="the snapshot")
    add_admin_args(p)
    p = cmd("rollback", cmd_rollback, "return the volumes to a snapshot (a safety snapshot is taken first)")
    p.add_argument("name", help="the snapshot to return to")
    p.add_argument("--force", action="store_true", help="even while member volumes are open")
    p = cmd("clone", cmd_clone, "writable clones of every member: volumes PREFIX-VOL (PREFIX for a volume)")
    p.add_argument("name", help="the snapshot to clone")
    p.add_argument("--as", dest="prefix", required=True, metavar="PREFIX", help="name (prefix) of the clones")
    p = cmd("diff", cmd_diff, "ranges written or trimmed between two snapshots")
    p.add_argument("frm", metavar="FROM", help="the older snapshot")
    p.add_argument("to", metavar="TO", help="the newer snapshot")
    admin_cmd.register_snapshot_lock(snap)
    pol = snap.add_parser("policy", help="automatic snapshots and retention").add_subparsers(
        dest="policy_action", required=True)
    p = pol.add_parser("set", help="snapshot G|VOL every interval and/or after an amount written; prune "
                                   "automatic snapshots beyond the keeps")
    add_pool_arg(p)
    add_json_arg(p)
    p.add_argument("owner", metavar="G|VOL", help="a consistency group or a volume")
    p.add_argument("--every", help="interval, like 15m or 1h (at least 1m); needed unless --after-written")
    p.add_argument("--after-written", metavar="SIZE",
                   help="also snapshot once SIZE (like 1G) was written to the volumes since the last snapshot")
    p.add_argument("--min-interval", default="60s", metavar="DURATION",
                   help="at most one --after-written snapshot per DURATION (default 60s)")
    p.add_argument("--pre", metavar="CMD", help="shell command run before each automatic snapshot (a database "
                   "checkpoint, fsfreeze -f); if it fails or times out, no snapshot is taken")
    p.add_argument("--post", metavar="CMD", help="shell command run after each automatic snapshot, always "
                   "(also after a failed --pre); like fsfreeze -u")
    p.add_argument("--hook-timeout", default="60s", metavar="DURATION",
                   help="how long --pre and --post may each run before they are killed (default 60s)")
    p.add_argument("--keep-last", type=int, default=0, metavar="N", help="keep the N newest automatic snapshots")
    p.add_argument("--keep-daily", type=int, default=0, metavar="N",
                   help="also keep the newest automatic snapshot of each of the last N days")
    add_admin_args(p)
    p.set_defaults(func=cmd_policy_set)
    p = pol.add_parser("clear", help="remove the policy of G|VOL (its snapshots stay)")
    add_pool_arg(p)
    add_json_arg(p)
    p.add_argument("owner", metavar="G|VOL", help="a consistency group or a volume")
    add_admin_args(p)
    p.set_defaults(func=cmd_policy_clear)
    p = pol.add_parser("list", help="list policies")
    add_pool_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_policy_list)


def _snaps(snaps: list[dict]) -> str:
    if not snaps:
        return "no snapshots"
    rows = [("OWNER", "NAME", "CREATED", "SEQ", "VOLUMES", "EXCLUSIVE", "SHARED")]
    for s in snaps:
        rows.append((s["owner"], s["name"] + (" (auto)" if s["auto"] else ""), when(s["created"]), str(s["seq"]),
                     ",".join(v["name"] for v in s["volumes"]), format_size(s["exclusive"], True),
                     format_size(s["shared"], True)))
    return table(rows)


def cmd_create(args: argparse.Namespace) -> int:
    pool = pool_path(args)
    with frozen(args.freeze):
        s = request(pool, "snapshot.create", owner=args.owner, name=args.name)
    emit(args, s, lambda s: f"created snapshot {s['owner']}/{s['name']} (seq {s['seq']}, "
         f"{len(s['volumes'])} volume(s))")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    emit(args, request(pool_path(args), "snapshot.list", owner=args.owner), _snaps)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    s = request(pool_path(args), "snapshot.delete", owner=args.owner, name=args.name)
    emit(args, s, lambda s: f"deleted snapshot {s['owner']}/{s['name']}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    s = request(pool_path(args), "snapshot.rollback", progress=True, owner=args.owner, name=args.name, force=args.force)
    emit(args, s, lambda s: f"rolled {s['owner']} back to {s['name']}; the previous state is snapshot "
         f"{s['owner']}/{s['safety_snapshot']}")
    return 0


def cmd_clone(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "snapshot.clone", progress=True, owner=args.owner, name=args.name, prefix=args.prefix)
    emit(args, r, lambda r: "created " + ", ".join(r["clones"]))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "snapshot.diff", owner=args.owner, frm=args.frm, to=args.to)

    def text(r: list[dict]) -> str:
        lines = []
        for v in r:
            lines.append(f"{v['volume']}: {format_size(v['changed_bytes'])} in {len(v['ranges'])} range(s)")
            lines.extend(f"  {s}-{e}" for s, e in v["ranges"])
        return "\n".join(lines)

    emit(args, r, text)
    return 0


def cmd_policy_set(args: argparse.Namespace) -> int:
    if args.every is None and args.after_written is None:
        raise UsageError("give --every (a time schedule), --after-written (a threshold), or both")
    r = request(pool_path(args), "snapshot.policy_set", owner=args.owner,
                every=parse_duration(args.every, "--every") if args.every else 0,
                keep_last=args.keep_last, keep_daily=args.keep_daily,
                after_written=parse_size(args.after_written, "--after-written") if args.after_written else 0,
                min_interval=parse_duration(args.min_interval, "--min-interval"), pre=args.pre or "",
                post=args.post or "", hook_timeout=parse_duration(args.hook_timeout, "--hook-timeout"))
    emit(args, r, lambda r: f"policy for {r['owner']}: {_triggers(r['policy'])}, keep last "
         f"{r['policy']['keep_last']}, keep daily {r['policy']['keep_daily']}"
         + (", with pre/post commands" if r["policy"].get("pre") or r["policy"].get("post") else ""))
    return 0


def _triggers(p: dict) -> str:
    out = [f"every {p['every']:.0f}s"] if p.get("every") else []
    if p.get("after_written"):
        out.append(f"after {format_size(p['after_written'])} written (at most every {p['min_interval']:.0f}s)")
    return " or ".join(out)


def cmd_policy_clear(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "snapshot.policy_set", owner=args.owner, every=None)
    emit(args, r, lambda r: f"policy for {r['owner']} removed")
    return 0


def cmd_policy_list(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "snapshot.policy_list")
    emit(args, r, lambda r: table([("OWNER", "EVERY", "AFTER-WRITTEN", "KEEP-LAST", "KEEP-DAILY", "HOOKS",
                                    "LAST RUN")] + [
        (p["owner"], f"{p['every']:.0f}s" if p["every"] else "-",
         format_size(p["after_written"]) if p.get("after_written") else "-", str(p["keep_last"]),
         str(p["keep_daily"]), "pre/post" if p.get("pre") or p.get("post") else "-", _last(p.get("last_run")))
        for p in r]) if r else "no policies")
    return 0


def _last(run: dict | None) -> str:
    if not run:
        return "-"
    return f"{when(run['when'])} {run.get('result', 'running')}" + (f": {run['reason']}" if run.get("reason") else "")
