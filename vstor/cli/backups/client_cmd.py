"""vstor client register | list | remove (on the array) and push | serve (on a client host)."""

from __future__ import annotations

import argparse
import logging

from vstor.cli.common import add_admin_args, add_json_arg, emit, pool_path, request, subcommand, table
from vstor.units import format_size

ARRAY = "the array's client endpoint (its 'array start --backup-listen'), like 10.0.0.1:7451"
TLS = "directory from 'vstor pki': the CA and this client's certificate (NAME.pem, NAME.key)"


def register(sub: argparse._SubParsersAction) -> None:
    cl = sub.add_parser("client", help="backup clients: register them on the array, push or serve on a client"
                        ).add_subparsers(dest="action", required=True)
    p = subcommand(cl, "register", cmd_register, "on the array: a client identity and what it may send")
    p.add_argument("name", help="the client's name: the common name of its certificate from 'vstor pki issue'")
    p.add_argument("--paths", metavar="DIR,DIR", help="the absolute paths it may back up (default: any)")
    p.add_argument("--quota", metavar="SIZE", help="the most bytes one of its jobs may hold, like 50G")
    p.add_argument("--key-file", help="the client's stream key (32 bytes or 64 hex digits): it must encrypt with it")
    add_admin_args(p)
    subcommand(cl, "list", cmd_list, "registered clients, and whether their agent is connected")
    p = subcommand(cl, "remove", cmd_remove, "forget a client (its jobs stay in the catalog)")
    p.add_argument("name", help="the client")
    add_admin_args(p)
    for name, func, text in (("push", cmd_push, "on a client: back up PATHs to the array now"),
                             ("serve", cmd_serve, "on a client: the agent the array's schedule calls")):
        p = cl.add_parser(name, help=text)
        p.add_argument("--array", required=True, metavar="HOST:PORT", help=ARRAY)
        p.add_argument("--name", required=True, help="this client's name (its certificate's)")
        p.add_argument("--tls-dir", required=True, help=TLS)
        p.add_argument("--key-file", help="encrypt the stream with this key (the one registered on the array)")
        p.add_argument("--check-content", action="store_true",
                       help="in an incremental, also hash files whose size and mtime are unchanged and send "
                       "those whose bytes differ (reads every file)")
        p.add_argument("paths", nargs="+" if name == "push" else "*", metavar="PATH",
                       help="what to back up" + ("" if name == "push" else " (default: the registered paths)"))
        if name == "push":
            p.add_argument("--level", choices=["full", "incremental"], help="default: the policy's level")
            p.add_argument("--policy", help="the policy to run under (default: the client's only one)")
            add_json_arg(p)
        p.set_defaults(func=func)


def cmd_register(args: argparse.Namespace) -> int:
    paths = [p for p in (args.paths or "").split(",") if p]
    r = request(pool_path(args), "client.register", name=args.name, paths=paths, quota=args.quota,
                key_file=args.key_file)
    emit(args, r, lambda c: f"registered client {c['name']}: paths {', '.join(c['paths']) or 'any'}, quota "
         f"{format_size(c['quota'], True) if c['quota'] else 'none'}, key {c['key_id'] or 'none'}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    def text(cs: list[dict]) -> str:
        rows = [("CLIENT", "PATHS", "QUOTA", "KEY ID", "AGENT")]
        rows += [(c["name"], ",".join(c["paths"]) or "any", format_size(c["quota"], True) if c["quota"] else "-",
                  c["key_id"] or "-", "connected" if c["connected"] else "-") for c in cs]
        return table(rows) if cs else "no backup clients"
    emit(args, request(pool_path(args), "client.list"), text)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "client.remove", name=args.name)
    emit(args, r, lambda c: f"removed client {c['name']}; its jobs stay in the catalog")
    return 0


def _key(args: argparse.Namespace) -> bytes | None:
    from vstor.backup.client.wire import load_key

    return load_key(args.key_file) if args.key_file else None


def cmd_push(args: argparse.Namespace) -> int:
    from vstor.backup.client.agent import push

    r = push(args.array, args.tls_dir, args.name, args.paths, args.level, args.policy, _key(args),
             check_content=args.check_content)
    emit(args, r, lambda x: f"job {x['job']} ({x['level']}): {x['status']}: {x['sent']['files']} entries sent "
         f"({format_size(x['sent']['bytes'], True)}), {x['sent']['deleted']} deleted, {x['files']} in the job")
    return 0 if r["status"] == "done" else 1


def cmd_serve(args: argparse.Namespace) -> int:
    from vstor.backup.client.agent import Agent

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    agent = Agent(args.array, args.tls_dir, args.name, args.paths, _key(args), check_content=args.check_content)
    try:
        agent.serve()
    except KeyboardInterrupt:
        agent.close()
    return 0
