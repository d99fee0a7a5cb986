"""vstor admin enroll | list | remove | require-approval | requests | approve | locks, and the
compliance locks: vstor backup lock, vstor snapshot lock (registered into those commands)."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from vstor.cli.common import add_admin_args, emit, pool_path, request, subcommand, table, when

UNTIL = ("the lock's date: YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS] (UTC), or a duration from now like 90d or 7y; "
         "a lock can be extended later, never shortened")


def register(sub: argparse._SubParsersAction) -> None:
    ad = sub.add_parser("admin", help="governance: admins with one-time codes, approval, compliance locks"
                        ).add_subparsers(dest="action", required=True)
    p = subcommand(ad, "enroll", cmd_enroll, "enrol an admin: prints its TOTP URI and QR code, once")
    p.add_argument("name", help="the new admin's name")
    add_admin_args(p)
    subcommand(ad, "list", cmd_list, "enrolled admins and whether approval is required")
    p = subcommand(ad, "remove", cmd_remove, "remove an enrolled admin")
    p.add_argument("name", help="the admin to remove")
    add_admin_args(p)
    p = subcommand(ad, "require-approval", cmd_require_approval,
                   "on: destructive changes wait for a second admin's approval (turning it off needs one)")
    p.add_argument("state", choices=["on", "off"], help="on or off")
    add_admin_args(p)
    p = subcommand(ad, "requests", cmd_requests, "approval requests waiting (--all: also finished ones)")
    p.add_argument("--all", action="store_true", help="also approved and expired requests")
    p = subcommand(ad, "approve", cmd_approve, "approve another admin's request with your code; it then runs")
    p.add_argument("request", type=int, help="the request's number (see 'vstor admin requests')")
    add_admin_args(p, required=True)
    subcommand(ad, "locks", cmd_locks, "compliance locks and the pool's compliance clock")


def register_backup_lock(bk: argparse._SubParsersAction) -> None:
    """vstor backup lock JOB|POLICY --until DATE (called by backup_cmd.register)."""
    p = subcommand(bk, "lock", cmd_backup_lock, "compliance lock on a job or a policy: nothing deletes, expires "
                   "or shortens it before the date")
    p.add_argument("target", metavar="JOB|POLICY", help="a job number, or a policy (all its jobs, new ones too)")
    p.add_argument("--until", required=True, metavar="DATE", help=UNTIL)
    add_admin_args(p)


def register_snapshot_lock(snap: argparse._SubParsersAction) -> None:
    """vstor snapshot lock G/S --until DATE (called by snapshot_cmd.register)."""
    p = subcommand(snap, "lock", cmd_snapshot_lock, "compliance lock on a snapshot: no delete, no pruning "
                   "before the date")
    p.add_argument("snapshot", metavar="G/S", help="the snapshot: GROUP-OR-VOLUME/SNAPSHOT")
    p.add_argument("--until", required=True, metavar="DATE", help=UNTIL)
    add_admin_args(p)


def print_qr(data: str, out: TextIO) -> None:
    """``data`` as a terminal QR code (qrcode's print_ascii: ANSI colours on a terminal, Unicode
    half blocks otherwise, as into a file or a pipe)."""
    import qrcode  # only here: other commands do not pay for it

    qr = qrcode.QRCode(border=2)
    qr.add_data(data)
    qr.print_ascii(out=out, tty=out.isatty())


def cmd_enroll(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "admin.enroll", name=args.name)
    if args.json:
        emit(args, r, str)
        return 0
    print(f"enrolled admin {r['name']}. Add it to an authenticator app (TOTP, 30 s, 6 digits): scan the QR code or "
          f"enter the URI. This is the only time the secret is shown.\n{r['uri']}")
    sys.stdout.flush()
    print_qr(r["uri"], sys.stdout)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    def text(r: dict) -> str:
        rows = [("ADMIN", "ENROLLED", "BY", "LAST CODE", "LOCKED UNTIL")]
        rows += [(a["name"], when(a["created"]), a["enrolled_by"], when(a["last_used"]),
                  when(a["locked_until"]) if a["locked_until"] else "-") for a in r["admins"]]
        head = f"approval required: {'yes' if r['require_approval'] else 'no'}"
        return head + "\n" + (table(rows) if r["admins"] else "no admins enrolled: governance is off")
    emit(args, request(pool_path(args), "admin.list"), text)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    emit(args, request(pool_path(args), "admin.remove", name=args.name), lambda r: f"removed admin {r['name']}")
    return 0


def cmd_require_approval(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "admin.require_approval", on=args.state == "on")
    emit(args, r, lambda r: f"approval required: {'yes' if r['require_approval'] else 'no'}")
    return 0


def _requests(rs: list[dict]) -> str:
    if not rs:
        return "no approval requests"
    rows = [("ID", "OP", "REQUESTER", "CREATED", "EXPIRES", "STATUS", "APPROVED BY", "ARGS")]
    rows += [(str(r["id"]), r["op"], r["requester"], when(r["created"]), when(r["expires"]), r["status"],
              r["approved_by"] or "-", ", ".join(f"{k}={v}" for k, v in sorted(r["args"].items()))[:60]) for r in rs]
    return table(rows)


def cmd_requests(args: argparse.Namespace) -> int:
    emit(args, request(pool_path(args), "admin.requests", all=args.all), _requests)
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "admin.approve", request=args.request, admin=args.as_admin, otp=args.otp)
    emit(args, r, lambda r: f"approved request {r['request']['id']} ({r['request']['op']} by "
         f"{r['request']['requester']}); it ran")
    return 0


def cmd_locks(args: argparse.Namespace) -> int:
    def text(r: dict) -> str:
        rows = [("LOCK", "WHAT", "UNTIL", "ACTIVE", "SET BY", "SET")]
        rows += [(x["key"], x["what"], when(x["until"]), "yes" if x["active"] else "expired", x["by"], when(x["set"]))
                 for x in r["locks"]]
        head = f"compliance clock: {when(r['compliance_time'])} UTC (system clock {when(r['wall_time'])} UTC)"
        return head + "\n" + (table(rows) if r["locks"] else "no compliance locks")
    emit(args, request(pool_path(args), "lock.list"), text)
    return 0


def cmd_backup_lock(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "backup.lock", target=args.target, until=args.until)
    emit(args, r, lambda r: f"locked {r['what']} until {when(r['until'])} UTC")
    return 0


def cmd_snapshot_lock(args: argparse.Namespace) -> int:
    owner, _, name = args.snapshot.rpartition("/")
    if not owner or not name:
        from vstor.errors import UsageError

        raise UsageError(f"invalid snapshot {args.snapshot!r}: use GROUP-OR-VOLUME/SNAPSHOT")
    r = request(pool_path(args), "snapshot.lock", owner=owner, name=name, until=args.until)
    emit(args, r, lambda r: f"locked {r['what']} until {when(r['until'])} UTC")
    return 0
