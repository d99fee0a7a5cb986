"""vstor volume create | list | show | resize | delete | attach | detach"""

from __future__ import annotations

import argparse

from vstor.cli.common import add_pool_arg, daemon_request, emit, pool_path, request, volume_table
from vstor.control import loop
from vstor.units import format_size, parse_size


def register(sub: argparse._SubParsersAction) -> None:
    vol = sub.add_parser("volume", help="manage volumes").add_subparsers(dest="action", required=True)

    def cmd(name: str, func: object, help_: str, json_out: bool = True) -> argparse.ArgumentParser:
        p = vol.add_parser(name, help=help_)
        add_pool_arg(p)
        if json_out:
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
        return p

    p = cmd("create", cmd_create, "create a thin volume")
    p.add_argument("name")
    p.add_argument("--size", required=True)
    cmd("list", cmd_list, "list volumes")
    cmd("show", cmd_show, "show one volume").add_argument("name")
    p = cmd("resize", cmd_resize, "grow (or, with --allow-shrink, shrink) a volume")
    p.add_argument("name")
    p.add_argument("--size", required=True)
    p.add_argument("--allow-shrink", action="store_true")
    cmd("delete", cmd_delete, "delete a volume and free its space").add_argument("name")
    p = cmd("attach", cmd_attach, "attach a loop device; prints /dev/loopN")
    p.add_argument("name")
    p.add_argument("--no-direct-io", action="store_true", help="let the loop device use the page cache")
    p.add_argument("--read-only", action="store_true")
    p = cmd("detach", cmd_detach, "detach the loop devices of a volume once all is durable")
    p.add_argument("name")


def _one(v: dict) -> str:
    return volume_table([v])


def cmd_create(args: argparse.Namespace) -> int:
    v = request(pool_path(args), "volume.create", name=args.name, size=parse_size(args.size))
    emit(args, v, lambda v: f"created volume {v['name']} ({format_size(v['size'])})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    emit(args, request(pool_path(args), "volume.list"), volume_table)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    emit(args, request(pool_path(args), "volume.show", name=args.name), _one)
    return 0


def cmd_resize(args: argparse.Namespace) -> int:
    v = request(pool_path(args), "volume.resize", name=args.name, size=parse_size(args.size),
                allow_shrink=args.allow_shrink)
    emit(args, v, lambda v: f"volume {v['name']} is now {format_size(v['size'])}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    v = request(pool_path(args), "volume.delete", name=args.name)
    emit(args, v, lambda v: f"deleted volume {v['name']}")
    return 0


def cmd_attach(args: argparse.Namespace) -> int:
    v = daemon_request(pool_path(args), "volume.show", name=args.name)
    result = loop.attach(v["image"], direct_io=not args.no_direct_io, read_only=args.read_only)
    emit(args, result | {"volume": v["name"]}, lambda r: r["device"])
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    pool = pool_path(args)
    v = daemon_request(pool, "volume.show", name=args.name)
    devices = [d["name"] for d in loop.loops_for(v["image"])]
    for dev in devices:
        loop.detach(dev)
    daemon_request(pool, "sync")
    emit(args, {"volume": v["name"], "detached": devices},
         lambda r: f"detached {', '.join(r['detached'])}" if r["detached"] else f"{r['volume']} was not attached")
    return 0
