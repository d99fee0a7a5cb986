"""vstor pki init | issue: the certificate authority of a replication pair."""

from __future__ import annotations

import argparse

from vstor.cli.common import add_json_arg, emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pki", help="certificates for replication (mutual TLS)").add_subparsers(
        dest="action", required=True)
    init = p.add_parser("init", help="create a certificate authority in DIR")
    init.add_argument("dir", help="directory for the CA's certificate and key")
    init.add_argument("--days", type=int, default=3650, help="validity of the CA (default 3650)")
    add_json_arg(init)
    init.set_defaults(func=cmd_init)
    issue = p.add_parser("issue", help="a key and certificate for array NAME, signed by the CA in --dir")
    issue.add_argument("name", help="the array's name, as its peers will call it")
    issue.add_argument("--dir", required=True, help="the CA directory from 'vstor pki init'")
    issue.add_argument("--days", type=int, default=825, help="validity of the certificate (default 825)")
    add_json_arg(issue)
    issue.set_defaults(func=cmd_issue)


def cmd_init(args: argparse.Namespace) -> int:
    from vstor.replication import pki  # cryptography's x509 is slow to import: only here

    path = pki.init_ca(args.dir, days=args.days)
    emit(args, {"ca": path}, lambda r: f"created CA {r['ca']} (its key stays in {args.dir}; keep it private)")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    from vstor.replication import pki

    cert, key = pki.issue(args.dir, args.name, days=args.days)
    emit(args, {"certificate": cert, "key": key}, lambda r: f"issued {r['certificate']} and {r['key']}")
    return 0
