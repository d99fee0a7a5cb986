"""vstor library create | list | show | delete, and vstor media create | inventory | load |
unload | move | import | export | show | protect"""

from __future__ import annotations

import argparse

from vstor.cli.common import emit, pool_path, request, subcommand, table
from vstor.units import format_size, on_off, parse_size, yes_no

LIBRARY = "the library's name"
DRIVE = "the drive's number, from 0"


def register(sub: argparse._SubParsersAction) -> None:
    lib = sub.add_parser("library", help="emulated tape and optical libraries").add_subparsers(
        dest="action", required=True)
    med = sub.add_parser("media", help="cartridges and discs: create, load, move, import, export").add_subparsers(
        dest="action", required=True)

    p = subcommand(lib, "create", cmd_lib_create, "create a library: slots, drives, mail slots")
    p.add_argument("name", help="the new library's name")
    p.add_argument("--type", required=True, choices=["tape", "optical"], help="tape or optical")
    p.add_argument("--slots", type=int, required=True, help="number of storage slots")
    p.add_argument("--drives", type=int, required=True, help="number of drives")
    p.add_argument("--mailslots", type=int, default=0, help="number of mail (import/export) slots (default 0)")
    p.add_argument("--drive-model", default="LTO-9", help="tape drives: LTO-5 .. LTO-9 (default LTO-9)")
    p.add_argument("--timing", default="off", help="robot and drive delays: off (default), lto9 (real LTO-9 "
                   "figures), or load=S,unload=S,rewind=S,locate=S,move=S")
    subcommand(lib, "list", cmd_lib_list, "list libraries")
    subcommand(lib, "show", cmd_lib_show, "one library with its inventory").add_argument("name", help=LIBRARY)
    subcommand(lib, "delete", cmd_lib_delete, "delete a library and its media").add_argument("name", help=LIBRARY)

    p = subcommand(med, "create", cmd_create, "new media in empty slots; the barcode suffix gives the tape type")
    p.add_argument("library", help=LIBRARY)
    p.add_argument("barcodes", nargs="*", help="barcodes of the new media, like VT0001L9")
    p.add_argument("--range", help="FIRST-LAST, like VT0001L9-VT0020L9")
    p.add_argument("--type", help="optical: BD-R, BD-RE, BDXL, DVD+R, DVD-RW, CD-R or MO")
    p.add_argument("--capacity", help="override the native capacity (small test media), like 64M")
    subcommand(med, "inventory", cmd_inventory, "every slot, drive and mail slot").add_argument("library", help=LIBRARY)
    p = subcommand(med, "load", cmd_load, "load a medium into a drive")
    p.add_argument("library", help=LIBRARY)
    p.add_argument("barcode", help="the medium's barcode")
    p.add_argument("--drive", type=int, required=True, help=DRIVE)
    p = subcommand(med, "unload", cmd_unload, "unload a drive; the medium returns to its home slot")
    p.add_argument("library", help=LIBRARY)
    p.add_argument("--drive", type=int, required=True, help=DRIVE)
    p = subcommand(med, "move", cmd_move, "move between elements (addresses like 1024, or slot1, drive0, mail1)")
    p.add_argument("library", help=LIBRARY)
    p.add_argument("src", metavar="FROM", help="the element the medium is in")
    p.add_argument("dst", metavar="TO", help="an empty element")
    p.add_argument("--flip", action="store_true", help="turn a two-sided disc over on the way")
    p = subcommand(med, "import", cmd_import, "cycle the mail slots: out what is there, in the shelf's media")
    p.add_argument("library", help=LIBRARY)
    door = p.add_mutually_exclusive_group()
    door.add_argument("--open", dest="door", action="store_const", const="open", help="only open the mail door")
    door.add_argument("--close", dest="door", action="store_const", const="close", help="insert and close it")
    p = subcommand(med, "export", cmd_export, "move a medium to a mail slot, for the next import cycle to take out")
    p.add_argument("library", help=LIBRARY)
    p.add_argument("barcode", help="the medium's barcode")
    p = subcommand(med, "show", cmd_show, "files, blocks, EOD, protection of one medium")
    p.add_argument("library", help=LIBRARY)
    p.add_argument("barcode", help="the medium's barcode")
    p.add_argument("--verify", action="store_true", help="re-read every block (and a WORM tape's hash chain)")
    for op, help_ in (("finalize", "close the write-once disc in a drive for good"),
                      ("erase", "blank the rewritable disc in a drive")):
        p = subcommand(med, op, cmd_disc, help_)
        p.add_argument("library", help=LIBRARY)
        p.add_argument("--drive", type=int, required=True, help=DRIVE)
        p.set_defaults(disc_op=op)
    p = subcommand(med, "protect", cmd_protect, "set or clear write-protect")
    p.add_argument("library", help=LIBRARY)
    p.add_argument("barcode", help="the medium's barcode")
    p.add_argument("state", choices=["on", "off"], help="on or off")


def _libs(rows: list[dict]) -> str:
    if not rows:
        return "no libraries"
    out = [("NAME", "TYPE", "SLOTS", "DRIVES", "MAIL", "MEDIA", "LOADED")]
    out += [(r["name"], r["type"] + (f" ({r['drive_model']})" if r["drive_model"] else ""), str(r["slots"]),
             str(r["drives"]), str(r["mailslots"]), str(r["media"]), ",".join(r["loaded"]) or "-") for r in rows]
    return table(out)


def _inventory(rows: list[dict]) -> str:
    out = [("ELEMENT", "ADDRESS", "BARCODE", "TYPE", "USED", "CAPACITY", "PROTECT")]
    for r in rows:
        full = r["barcode"] is not None
        out.append((r["element"], str(r["address"]), r["barcode"] or "-", r["kind"] or "-",
                    format_size(r["used"], True) if full else "-", format_size(r["capacity"], True) if full else "-",
                    ("yes" if r["protect"] else "no") if full else "-"))
    return table(out)


def cmd_lib_create(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "library.create", name=args.name, type=args.type, slots=args.slots,
                drives=args.drives, mailslots=args.mailslots, drive_model=args.drive_model, timing=args.timing)
    emit(args, r, lambda r: f"created {r['type']} library {r['name']}: {r['slots']} slots, {r['drives']} drives, "
         f"{r['mailslots']} mail slots")
    return 0


def cmd_lib_list(args: argparse.Namespace) -> int:
    emit(args, request(pool_path(args), "library.list"), _libs)
    return 0


def cmd_lib_show(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "library.show", name=args.name)
    emit(args, r, lambda r: _libs([r]) + "\n\n" + _inventory(r["inventory"]))
    return 0


def cmd_lib_delete(args: argparse.Namespace) -> int:
    emit(args, request(pool_path(args), "library.delete", name=args.name), lambda r: f"deleted library {r['name']}")
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    cap = parse_size(args.capacity, "capacity") if args.capacity else None
    rows = request(pool_path(args), "media.create", library=args.library, barcodes=args.barcodes, range=args.range,
                   type=args.type, capacity=cap)
    emit(args, rows, lambda rows: f"created {len(rows)} medium/media in {args.library}: "
         + ", ".join(f"{r['barcode']} ({r['kind']})" for r in rows))
    return 0


def cmd_inventory(args: argparse.Namespace) -> int:
    emit(args, request(pool_path(args), "media.inventory", library=args.library), _inventory)
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "media.load", progress=True,
                library=args.library, barcode=args.barcode, drive=args.drive)
    emit(args, r, lambda r: f"loaded {r['barcode']} ({r['kind']}) into drive{r['drive']}")
    return 0


def cmd_unload(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "media.unload", progress=True, library=args.library, drive=args.drive)
    emit(args, r, lambda r: f"unloaded {r['barcode']} from drive{r['drive']} to address {r['to']}")
    return 0


def cmd_move(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "media.move", progress=True,
                library=args.library, src=args.src, dst=args.dst, flip=args.flip)
    emit(args, r, lambda r: f"moved {r['barcode']} from {r['from']} to {r['to']}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "media.import", progress=True, library=args.library, door=args.door or "cycle")
    emit(args, r, lambda r: f"removed: {', '.join(r['removed']) or '-'}; imported: {', '.join(r['imported']) or '-'}; "
         f"mail door {'open' if r['mail_open'] else 'closed'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "media.export", progress=True, library=args.library, barcode=args.barcode)
    emit(args, r, lambda r: f"{r['barcode']} is in mail slot {r['mailslot']}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "media.show", progress=args.verify,
                library=args.library, barcode=args.barcode, verify=args.verify)

    emit(args, r, _medium_text)
    return 0


def _medium_text(r: dict) -> str:
    """``media show`` as aligned "field value" lines: sizes in units, booleans as words."""
    rows: list[tuple[str, str]] = [("barcode", r["barcode"]), ("kind", r["kind"]), ("element", r["element"]),
                                   ("capacity", format_size(r["capacity"], True)),
                                   ("used", format_size(r["used"], True))]
    rows += [(k, str(r[k])) for k in ("partitions", "files", "blocks", "eod") if isinstance(r.get(k), int)]
    rows += [("protect", on_off(r["protect"])), ("worm", yes_no(r["worm"]))]
    rows += [(k, yes_no(r[k])) for k in ("cleaning", "encrypted", "cut_at_load") if k in r]
    rows.append(("loads", str(r["loads"])))
    v = r.get("verify")
    if v is not None:
        rows.append(("verify", (f"{v['objects']} objects, " + (f"{len(v['damaged'])} DAMAGED: "
                                + "; ".join(v["damaged"]) if v["damaged"] else "all good")
                                + (f", hash chain ends {v['chain'][:16]}" if v.get("chain") else ""))))
    for side in r.get("sides", []):
        nwa = side.get("next_writable_address")
        rows.append((f"side {side['side']}", f"{side['state']}, {len(side['sessions'])} session(s)"
                     + (f", next writable address {nwa}" if nwa is not None else "")))
    width = max(len(k) for k, _ in rows) + 2
    return "\n".join(f"{k:<{width}}{val}" for k, val in rows)


def cmd_disc(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "media.disc", progress=True,
                library=args.library, drive=args.drive, action=args.disc_op)
    emit(args, r, lambda r: f"{r['barcode']} side {r['side']}: {r['state']}, {len(r['sessions'])} session(s)")
    return 0


def cmd_protect(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "media.protect", library=args.library, barcode=args.barcode, on=args.state == "on")
    emit(args, r, lambda r: f"{r['barcode']}: write-protect {'on' if r['protect'] else 'off'}")
    return 0
