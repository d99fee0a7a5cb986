"""vstor group create | add | remove | delete | list | show"""

from __future__ import annotations

import argparse

from vstor.cli.common import emit, pool_path, request, subcommand, table
from vstor.units import format_size


def register(sub: argparse._SubParsersAction) -> None:
    grp = sub.add_parser("group", help="manage consistency groups").add_subparsers(dest="action", required=True)

    def cmd(name: str, func: object, help_: str) -> argparse.ArgumentParser:
        return subcommand(grp, name, func, help_)

    p = cmd("create", cmd_create, "create a consistency group: one write order over its volumes")
    p.add_argument("name", help="the new group's name")
    p.add_argument("--volumes", default="", help="comma-separated volumes to put in the group")
    p = cmd("add", cmd_add, "add a volume to a group")
    p.add_argument("group", help="the group")
    p.add_argument("volume", help="the volume to add")
    p = cmd("remove", cmd_remove, "take a volume out of a group")
    p.add_argument("group", help="the group")
    p.add_argument("volume", help="the volume to take out")
    cmd("delete", cmd_delete, "delete an empty group without snapshots").add_argument("group", help="the group")
    cmd("list", cmd_list, "list groups")
    cmd("show", cmd_show, "show one group with its space").add_argument("group", help="the group")


def _groups(groups: list[dict]) -> str:
    if not groups:
        return "no groups"
    rows = [("NAME", "VOLUMES", "SNAPSHOTS", "SEQ", "POLICY")]
    for g in groups:
        p = g["policy"]
        pol = f"every {p['every']:.0f}s keep-last {p['keep_last']} keep-daily {p['keep_daily']}" if p else "-"
        rows.append((g["name"], ",".join(g["volumes"]) or "-", str(g["snapshots"]), str(g["seq"]), pol))
    return table(rows)


def cmd_create(args: argparse.Namespace) -> int:
    vols = [v for v in args.volumes.split(",") if v]
    g = request(pool_path(args), "group.create", name=args.name, volumes=vols)
    emit(args, g, lambda g: f"created group {g['name']} with {len(g['volumes'])} volume(s)")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    g = request(pool_path(args), "group.add", group=args.group, volume=args.volume)
    emit(args, g, lambda g: f"group {g['name']}: {', '.join(g['volumes'])}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    g = request(pool_path(args), "group.remove", group=args.group, volume=args.volume)
    emit(args, g, lambda g: f"group {g['name']}: {', '.join(g['volumes']) or 'no volumes'}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    g = request(pool_path(args), "group.delete", group=args.group)
    emit(args, g, lambda g: f"deleted group {g['name']}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    emit(args, request(pool_path(args), "group.list"), _groups)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    g = request(pool_path(args), "group.show", group=args.group)
    sp = g["space"]
    emit(args, g, lambda g: _groups([g]) + f"\nspace: {format_size(sp['allocated'])} live, "
         f"{format_size(sp['snapshots'])} held only by snapshots, {format_size(sp['total'])} in all")
    return 0
