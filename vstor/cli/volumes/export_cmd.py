"""vstor volume export | unexport | exports: NBD exports of volumes and snapshot images."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from vstor.cli.common import emit, pool_path, request, table
from vstor.units import format_size


def register(cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the subcommands with volume_cmd's ``cmd(name, func, help)`` factory."""
    p = cmd("export", cmd_export, "serve a volume (or a snapshot image) over NBD: persists across restarts")
    p.add_argument("name", help="the export name clients ask for; the volume of that name unless --snapshot")
    p.add_argument("--read-only", action="store_true", help="refuse writes, trims and zeroing (EPERM)")
    p.add_argument("--snapshot", metavar="G/S/V", help="export this snapshot image (read-only) under NAME")
    p.add_argument("--allow", nargs="+", metavar="CLIENTNAME",
                   help="only TLS clients whose certificate has one of these names ('vstor pki issue'); "
                   "give NAME before it")
    p.add_argument("--shared", action="store_true",
                   help="allow a writable export of a volume that is also attached on the array host")
    p = cmd("unexport", cmd_unexport, "stop exporting NAME over NBD and disconnect its clients")
    p.add_argument("name", help="the export name")
    cmd("exports", cmd_exports, "list NBD exports: clients connected, ops and bytes")


def cmd_export(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "volume.export", name=args.name, read_only=args.read_only, snapshot=args.snapshot,
                allow=args.allow or [], shared=args.shared)

    def text(r: dict) -> str:
        what = f"snapshot {r['snapshot']}" if r["snapshot"] else f"volume {r['volume']}"
        mode = "read-only" if r["effective_read_only"] else "read-write"
        line = f"exported {what} as {r['name']} ({mode}{'; ' + r['why_read_only'] if r['why_read_only'] else ''})"
        if not r.get("server"):
            line += "; the NBD server is not running (start the array with --nbd ADDR:PORT)"
        return line

    emit(args, r, text)
    return 0


def cmd_unexport(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "volume.unexport", name=args.name)
    emit(args, r, lambda r: f"unexported {r['name']}" + (f", disconnected {r['disconnected']} client(s)"
                                                         if r["disconnected"] else ""))
    return 0


def cmd_exports(args: argparse.Namespace) -> int:
    emit(args, request(pool_path(args), "volume.exports"), exports_text)
    return 0


def exports_text(r: dict) -> str:
    srv = r.get("server")
    head = (f"NBD server {srv['address']} ({'TLS required' if srv['tls'] else 'plain TCP'}), "
            f"{srv['clients']} client(s)" if srv else "NBD server not running (array start --nbd ADDR:PORT)")
    if not r["exports"]:
        return head + "\nno exports"
    rows = [("EXPORT", "SOURCE", "SIZE", "MODE", "ALLOW", "CLIENTS", "OPS", "READ", "WRITTEN")]
    for e in r["exports"]:
        rows.append((e["name"], f"snapshot {e['snapshot']}" if e["snapshot"] else e["volume"],
                     format_size(e["size"]), ("ro" if e["effective_read_only"] else "rw") + (",shared" if e["shared"]
                                                                                            else ""),
                     ",".join(e["allow"]) or "any", str(e["clients"]), str(e["ops"]),
                     format_size(e["bytes_read"], True), format_size(e["bytes_written"], True)))
    problems = [f"{e['name']}: {e['problem']}" for e in r["exports"] if e["problem"]]
    return "\n".join([head, table(rows), *problems])
