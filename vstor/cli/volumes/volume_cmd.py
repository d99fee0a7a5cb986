"""vstor volume create | list | show | resize | delete | attach | detach | export | unexport | exports"""

from __future__ import annotations

import argparse

from vstor.cli.common import (
    add_json_arg,
    add_pool_arg,
    add_timeout_arg,
    daemon_request,
    emit,
    pool_path,
    request,
    volume_table,
)
from vstor.cli.volumes import export_cmd
from vstor.control.host import loop
from vstor.errors import UsageError
from vstor.units import format_size, parse_size


def register(sub: argparse._SubParsersAction) -> None:
    vol = sub.add_parser("volume", help="manage volumes").add_subparsers(dest="action", required=True)

    def cmd(name: str, func: object, help_: str, json_out: bool = True) -> argparse.ArgumentParser:
        p = vol.add_parser(name, help=help_)
        add_pool_arg(p)
        add_timeout_arg(p)
        if json_out:
            add_json_arg(p)
        p.set_defaults(func=func)
        return p

    p = cmd("create", cmd_create, "create a thin volume")
    p.add_argument("name", help="the new volume's name")
    p.add_argument("--size", required=True, help="virtual size, like 10G or 512M")
    cmd("list", cmd_list, "list volumes")
    cmd("show", cmd_show, "show one volume").add_argument("name", help="the volume")
    p = cmd("resize", cmd_resize, "grow (or, with --allow-shrink, shrink) a volume")
    p.add_argument("name", help="the volume")
    p.add_argument("--size", required=True, help="new virtual size, like 20G")
    p.add_argument("--allow-shrink", action="store_true", help="allow a smaller size: the data past it is lost")
    cmd("delete", cmd_delete, "delete a volume and free its space").add_argument("name", help="the volume")
    p = cmd("attach", cmd_attach, "attach a loop device; prints /dev/loopN")
    p.add_argument("name", nargs="?", help="the volume (or give --snapshot)")
    p.add_argument("--snapshot", metavar="G/NAME/VOL", help="attach a snapshot's image (read-only) instead")
    p.add_argument("--no-direct-io", action="store_true", help="let the loop device use the page cache")
    p.add_argument("--read-only", action="store_true", help="a read-only loop device")
    p = cmd("detach", cmd_detach, "detach the loop devices of a volume once all is durable")
    p.add_argument("name", nargs="?", help="the volume (or give --snapshot)")
    p.add_argument("--snapshot", metavar="G/NAME/VOL", help="detach a snapshot's image instead")
    export_cmd.register(cmd)


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
    v = request(pool_path(args), "volume.resize", progress=True, name=args.name, size=parse_size(args.size),
                allow_shrink=args.allow_shrink)
    emit(args, v, lambda v: f"volume {v['name']} is now {format_size(v['size'])}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    v = request(pool_path(args), "volume.delete", progress=True, name=args.name)
    emit(args, v, lambda v: f"deleted volume {v['name']}")
    return 0


def _image(args: argparse.Namespace) -> tuple[str, str]:
    """(name, image path) of the volume or snapshot image the command names."""
    if bool(args.name) == bool(args.snapshot):
        raise UsageError("name a volume, or give --snapshot GROUP-OR-VOLUME/SNAPSHOT/VOLUME (not both)")
    if args.snapshot:
        r = daemon_request(pool_path(args), "snapshot.image", spec=args.snapshot)
        return r["spec"], r["image"]
    v = daemon_request(pool_path(args), "volume.show", name=args.name)
    return v["name"], v["image"]


def cmd_attach(args: argparse.Namespace) -> int:
    name, image = _image(args)
    read_only = args.read_only or bool(args.snapshot)  # snapshots are read-only
    result = loop.attach(image, direct_io=not args.no_direct_io, read_only=read_only)
    emit(args, result | {"volume": name, "read_only": read_only}, lambda r: r["device"])
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    pool = pool_path(args)
    name, image = _image(args)
    v = {"name": name}
    devices = [d["name"] for d in loop.loops_for(image)]
    for dev in devices:
        loop.detach(dev)
    daemon_request(pool, "sync")
    emit(args, {"volume": v["name"], "detached": devices},
         lambda r: f"detached {', '.join(r['detached'])}" if r["detached"] else f"{r['volume']} was not attached")
    return 0
