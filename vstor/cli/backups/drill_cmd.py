"""vstor backup drill POLICY | list | remove POLICY, and vstor backup drills"""

from __future__ import annotations

import argparse
import os

from vstor.cli.common import add_admin_args, emit, pool_path, request, subcommand, table, when
from vstor.errors import UsageError

__all__ = ["register"]


def register(bk: argparse._SubParsersAction) -> None:
    """Add ``drill`` and ``drills`` to the ``vstor backup`` subcommands."""
    p = subcommand(bk, "drill", cmd_drill,
                   "restore drills: restore a policy's latest chain to scratch, check it isolated, clean up")
    p.add_argument("policy", metavar="POLICY|list|remove",
                   help="the policy to define or run a drill for; 'list': the defined drills; "
                        "'remove POLICY': delete a policy's drill definition (its history stays)")
    p.add_argument("name", nargs="?", metavar="POLICY", help="with 'remove': the policy")
    p.add_argument("--schedule", metavar="CRON",
                   help='when the drill runs by itself, in cron syntax, like "0 4 * * SUN" (UTC)')
    p.add_argument("--check", metavar="SCRIPT",
                   help="an executable run in an isolated network namespace instead of 'e2fsck -fn DEVICE'; "
                        "it gets VSTOR_DRILL_DEVICE, VSTOR_DRILL_MOUNT (if mounted), VSTOR_DRILL_JOB")
    p.add_argument("--check-timeout", metavar="DURATION", help="how long the check may run (default 10m)")
    p.add_argument("--now", action="store_true",
                   help="run the drill now (the default when no --schedule, --check or --check-timeout is given)")
    add_admin_args(p)  # defining or removing a drill is governed (vstor/backup/governance/rules.py)
    p = subcommand(bk, "drills", cmd_drills, "restore drill history, newest first")
    p.add_argument("--policy", help="only this policy's drills")


def _drill_line(d: dict) -> str:
    out = f"drill {d['id']} of {d['policy']} (job {d.get('job') or '-'}): {d['status']}"
    if d["status"] != "running":
        out += f", restore {d.get('restore_s') or 0:.1f}s, check {d.get('check_s') or 0:.1f}s"
    if d.get("reason"):
        out += f": {d['reason']}"
    if d["status"] == "failed" and d.get("output"):
        out += "\n" + "\n".join("  " + line for line in d["output"].rstrip().splitlines()[-10:])
    return out


def _defs(ds: list[dict]) -> str:
    if not ds:
        return "no restore drills defined"
    rows = [("POLICY", "SCHEDULE", "CHECK", "TIMEOUT", "NEXT RUN")]
    rows += [(d["policy"], d["schedule"] or "by hand", d["check"] or "e2fsck -fn", f"{d['timeout']:.0f}s",
              when(d.get("next_run"))) for d in ds]
    return table(rows)


def cmd_drill(args: argparse.Namespace) -> int:
    pool = pool_path(args)
    if args.policy == "list":
        emit(args, request(pool, "backup.drill.list"), _defs)
        return 0
    if args.policy == "remove":
        if not args.name:
            raise UsageError("give the policy whose drill to remove: vstor backup drill remove POLICY")
        r = request(pool, "backup.drill.remove", policy=args.name)
        emit(args, r, lambda d: f"removed the restore drill of {d['policy']}; its history stays")
        return 0
    if args.name:
        raise UsageError(f"unexpected argument {args.name!r}: give one policy")
    check = os.path.abspath(args.check) if args.check else None  # the daemon's cwd is not ours
    r = request(pool, "backup.drill", progress=True, policy=args.policy, schedule=args.schedule, check=check,
                check_timeout=args.check_timeout, now=args.now)

    def text(x: dict) -> str:
        lines = []
        if "definition" in x:
            lines.append("drill of " + x["definition"]["policy"] + ": " + (x["definition"]["schedule"] or "by hand")
                         + ", check " + (x["definition"]["check"] or "e2fsck -fn"))
        if "drill" in x:
            lines.append(_drill_line(x["drill"]))
        return "\n".join(lines)
    emit(args, r, text)
    return 1 if r.get("drill", {}).get("status") == "failed" else 0


def cmd_drills(args: argparse.Namespace) -> int:
    def text(ds: list[dict]) -> str:
        if not ds:
            return "no restore drills yet"
        rows = [("DRILL", "POLICY", "JOB", "STATUS", "STARTED", "RESTORE", "CHECK", "BYTES", "REASON")]
        rows += [(str(d["id"]), d["policy"], str(d.get("job") or "-"), d["status"], when(d["started"]),
                  f"{d['restore_s']:.1f}s" if d.get("restore_s") is not None else "-",
                  f"{d['check_s']:.1f}s" if d.get("check_s") is not None else "-", str(d.get("bytes") or 0),
                  d.get("reason") or "") for d in ds]
        return table(rows)
    emit(args, request(pool_path(args), "backup.drills", policy=args.policy), text)
    return 0
