"""vstor array start | stop | status"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from vstor.cli.common import add_json_arg, add_pool_arg, daemon_request, emit, pool_path, volume_table
from vstor.control.host.lock import daemon_pid
from vstor.control.poolfiles import log_path, open_private, warn_key_file
from vstor.errors import Busy, NotFound, NotRunning, UsageError, VstorError, error_from_wire
from vstor.store.journal.outage import outage_line
from vstor.store.superblock import layout, load_superblock
from vstor.units import format_size, on_off

START_TIMEOUT = 600.0


def register(sub: argparse._SubParsersAction) -> None:
    arr = sub.add_parser("array", help="start, stop and inspect the array daemon").add_subparsers(
        dest="action", required=True)
    s = arr.add_parser("start", help="start the daemon and mount the volumes")
    add_pool_arg(s)
    s.add_argument("--mount", required=True, help="directory for the FUSE mount")
    s.add_argument("--key-file", help="key of an encrypted pool (default: the path given at init)")
    s.add_argument("--foreground", action="store_true", help="run in this process, log to stderr")
    s.add_argument("--listen", metavar="ADDR:PORT", help="replication endpoint, like 10.0.0.1:7450 (needs --tls-dir)")
    s.add_argument("--backup-listen", metavar="ADDR:PORT",
                   help="endpoint for backup clients (push and agents), like 10.0.0.1:7451 (needs --tls-dir)")
    s.add_argument("--tls-dir", help="directory from 'vstor pki': the CA and this array's certificate")
    s.add_argument("--name", help="this array's certificate name in --tls-dir and --nbd-tls-dir (default: the only one "
                   "there)")
    s.add_argument("--metrics", metavar="ADDR:PORT", help="serve Prometheus /metrics and a dashboard at / here")
    s.add_argument("--nbd", metavar="ADDR:PORT", help="serve the exported volumes over NBD here, like 0.0.0.0:10809 "
                   "(see 'vstor volume export')")
    s.add_argument("--nbd-tls-dir", metavar="DIR", help="certificates for NBD ('vstor pki'): TLS with client "
                   "certificates is then required")
    s.add_argument("--nbd-poll-us", metavar="US", type=int, default=None,
                   help="microseconds an NBD connection polls for its client's next request before it sleeps "
                   "(default 40; 0: never poll, to save CPU)")
    s.add_argument("--takeover", action="store_true",
                   help="pool on RADOS: if another host's daemon still holds it, fence that daemon (blocklist its "
                   "RADOS client, break its lock) and take the pool over, replaying its journal as after a crash")
    s.set_defaults(func=cmd_start)
    t = arr.add_parser("stop", help="flush, unmount and stop the daemon; waits until done")
    add_pool_arg(t)
    t.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="how long to wait for the daemon to exit (default 120)")
    t.set_defaults(func=cmd_stop)
    st = arr.add_parser("status", help="daemon, mount, volumes and journal state")
    add_pool_arg(st)
    add_json_arg(st)
    st.set_defaults(func=cmd_status)


def _daemon_argv(pool: str, args: argparse.Namespace) -> list[str]:
    argv = [sys.executable, "-m", "vstor.control.daemon", "--pool", pool, "--mount", os.path.abspath(args.mount)]
    if args.key_file:
        argv += ["--key-file", os.path.abspath(args.key_file)]
    if args.backup_listen and not args.tls_dir:
        raise UsageError("--backup-listen needs --tls-dir: backup clients always use TLS with mutual authentication")
    if args.listen and not args.tls_dir:
        raise UsageError("--listen needs --tls-dir: replication is always TLS with mutual authentication")
    if args.tls_dir:
        if not os.path.exists(os.path.join(args.tls_dir, "ca.pem")):
            raise NotFound(f"no CA in {args.tls_dir}; create one with 'vstor pki init {args.tls_dir}'")
        argv += ["--tls-dir", os.path.abspath(args.tls_dir)]
    if args.listen:
        from vstor.replication.transport import parse_address

        parse_address(args.listen)
        argv += ["--listen", args.listen]
    if args.backup_listen:
        from vstor.replication.transport import parse_address

        parse_address(args.backup_listen)
        argv += ["--backup-listen", args.backup_listen]
    if args.name:
        argv += ["--name", args.name]
    if args.metrics:
        argv += ["--metrics", args.metrics]
    argv += _nbd_argv(args)
    if getattr(args, "takeover", False):
        from vstor.store.backend.stub import read_stub

        if read_stub(pool) is None:
            raise UsageError(f"--takeover is for pools on RADOS; {pool} is a local pool, which one host serves")
        argv += ["--takeover"]
    return argv


def _nbd_argv(args: argparse.Namespace) -> list[str]:
    if args.nbd_tls_dir and not args.nbd:
        raise UsageError("--nbd-tls-dir needs --nbd ADDR:PORT")
    from vstor.nbd.serving.poll import MAX_POLL_US

    poll = args.nbd_poll_us
    if poll is not None and not args.nbd:
        raise UsageError("--nbd-poll-us needs --nbd ADDR:PORT")
    if poll is not None and not 0 <= poll <= MAX_POLL_US:
        raise UsageError(f"--nbd-poll-us must be 0 to {MAX_POLL_US} microseconds, not {poll}")
    if not args.nbd:
        return []
    from vstor.nbd.server import parse_address
    from vstor.nbd.tlsdir import server_files

    parse_address(args.nbd)
    argv = ["--nbd", args.nbd]
    if args.nbd_tls_dir:
        for path in server_files(args.nbd_tls_dir, args.name):
            if not os.path.exists(path):
                raise NotFound(f"missing TLS file {path}; see 'vstor pki init' and 'vstor pki issue'")
        argv += ["--nbd-tls-dir", os.path.abspath(args.nbd_tls_dir)]
    if poll is not None:
        argv += ["--nbd-poll-us", str(poll)]
    return argv


def cmd_start(args: argparse.Namespace) -> int:
    pool = pool_path(args)
    pid = daemon_pid(pool)
    if pid is not None:
        from vstor.control.host.lock import PoolLock

        raise Busy(f"pool {pool} is in use by {PoolLock(pool).holder()}")
    warn_key_file(pool, _key_path(pool, args.key_file))  # stderr and log/daemon.log
    if args.foreground:
        from vstor.control.daemon import main as daemon_main

        argv = _daemon_argv(pool, args)[3:] + ["--foreground"]
        return daemon_main(argv)
    r, w = os.pipe()
    with os.fdopen(open_private(log_path(pool, "daemon.out")), "ab") as out:
        proc = subprocess.Popen([*_daemon_argv(pool, args), "--ready-fd", str(w)], pass_fds=(w,),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    os.close(w)
    line = _read_line(r, START_TIMEOUT)
    if line == "READY":
        print(f"array running: pid {proc.pid}, volumes under {os.path.abspath(args.mount)}/volumes")
        return 0
    if line.startswith("ERROR "):
        _, code, kind, message = line.split(" ", 3)
        err = error_from_wire(kind, message)
        err.exit_code = int(code) if code.isdigit() else err.exit_code
        raise err
    proc.kill()
    raise VstorError(f"the daemon did not start (see {layout(pool)['log']}/daemon.log)")


def _key_path(pool: str, key_file: str | None) -> str | None:
    """The key file the daemon will read: --key-file, or the one named at init; None if the pool
    is not encrypted or its superblock cannot be read (the daemon reports that)."""
    try:
        sb = load_superblock(pool)
    except VstorError:
        return None
    return (key_file or sb.key_file) if sb.encrypt else None


def _listener_line(li: dict) -> str:
    if li["state"] != "serving":
        return f"replication listener {li['address']} {li['state'].upper()} (see the daemon log)"
    return (f"replication listening on {li['address']}, {li['pending']}/{li['pending_cap']} in handshake, "
            f"{li['rejected_busy']} refused over the cap, {li['handshake_timeouts']} handshake timeouts")


def _nbd_line(n: dict) -> str:
    return (f"nbd       {n['address']} {n['state']}, {'TLS required' if n['tls'] else 'plain TCP'}, {n['clients']} "
            f"client(s), {n['pending']}/{n['pending_cap']} in handshake, {n['rejected_busy']} refused over the cap")


def _background_line(s: dict) -> str:
    """What the maintenance loop's GC and defragmentation are doing, and the maps' extents."""
    d = s.get("defrag") or {}
    defrag = d.get("state", "-") if d.get("enabled", True) else "off"
    return f"background gc {s['gc']['state']}; defrag {defrag}; {s.get('fragment_extents', 0):,} chunk extents"


def _position(pos: list[int]) -> str:
    return f"segment {pos[0]} offset {pos[1]}"


def _fuse_line(conn: dict) -> str:
    """The FUSE connection's negotiated figures: "max_write 1M, max_read 1M"."""
    return ", ".join(f"{k} {format_size(v) if isinstance(v, int) and k.startswith('max_') else v}"
                     for k, v in conn.items()) or "-"


def _recovery_line(r: dict) -> str:
    """What recovery did at start, in words (--json has every field)."""
    if not r:
        return "-"
    rate = f" ({r['mb_per_s']} MB/s)" if r.get("mb_per_s") else ""
    out = [f"replayed {r.get('records', 0)} records, {format_size(r.get('bytes', 0), True)} in "
           f"{r.get('seconds', 0)}s{rate}"]
    if r.get("torn_tail"):
        t = r["torn_tail"]
        out.append(f"torn tail cut at segment {t['segment']} offset {t['offset']} ({t['reason']})")
    if r.get("rebuilt"):
        out.append("maps rebuilt from the whole journal")
    if r.get("headers_rewritten"):
        out.append(f"segment headers rewritten: {', '.join(map(str, r['headers_rewritten']))}")
    if r.get("salvaged"):
        out.append(f"SALVAGED: segment {r['salvaged'].get('segment')} cut at offset {r['salvaged'].get('offset')}")
    out += [f"damage worked around: {d}" for d in r.get("damage", [])]
    return "; ".join(out)


def _read_line(fd: int, timeout: float) -> str:
    import select

    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return ""
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
    finally:
        os.close(fd)
    return buf.decode(errors="replace").strip()


def cmd_stop(args: argparse.Namespace) -> int:
    pool = pool_path(args)
    pid = daemon_pid(pool)
    if pid is None:
        raise NotRunning(f"the array for {pool} is not running")
    reply = daemon_request(pool, "stop")
    deadline = time.monotonic() + args.timeout
    while daemon_pid(pool) is not None:
        if time.monotonic() > deadline:
            raise Busy(f"the daemon (pid {pid}) did not stop within {args.timeout:.0f}s; see its log")
        time.sleep(0.05)
    if reply.get("failed"):
        raise VstorError(f"the array had failed ({reply['failed']}); it is stopped now, without a final "
                         f"checkpoint: run 'vstor pool check {pool}' before starting it again")
    print(f"array stopped (pid {pid})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    pool = pool_path(args)
    if daemon_pid(pool) is None:
        raise NotRunning(f"the array for {pool} is not running")
    st = daemon_request(pool, "status")

    def text(s: dict) -> str:
        j = s["journal"]
        lines = [
            f"pool      {s['pool']} ({s['settings']['uuid']})",
            f"daemon    pid {s['pid']}, mounted at {s['mount']}",
            f"settings  chunk {format_size(s['settings']['chunk_size'])}, compress {s['settings']['compress']}, "
            f"encrypt {on_off(s['settings']['encrypt'])}",
            f"journal   {j['segments']} segments, {format_size(j['journal_bytes'], True)} on disk, "
            f"{format_size(j['mapped_bytes'], True)} mapped, tail {_position(j['tail'])}, "
            f"durable {_position(j['durable'])}" + (f", FAILED: {j['failed']}" if j["failed"] else ""),
            f"space     {format_size(j['free_bytes'], True)} free in the filesystem under the pool"
            + (f", {format_size(j['spare_bytes'], True)} in {j['spare_segments']} spare segment file(s) kept for reuse"
               if j.get("spare_segments") else ""),
            *([f"prepared  {format_size(j['prepared_bytes'], True)} of journal space written ahead of the tail "
               f"(syncs every {format_size(j.get('sync_mean_bytes', 0), True)} on average)"]
              if j.get("prepared_bytes") else []),
            *([f"storage   {outage_line(j['outage'])}"] if j.get("outage") else []),
            f"fuse      {_fuse_line(s['fuse'])}",
            f"recovery  {_recovery_line(s['recovery'])}",
            *([_background_line(s)] if s.get("gc") else []),
            *([_listener_line(s["replication"]["listener"])] if (s.get("replication") or {}).get("listener") else []),
            *([_nbd_line(s["nbd"])] if s.get("nbd") else []),
            *([f"maintenance FAILING: {s['maintenance_error']} (retried every second; see the daemon log)"]
              if s.get("maintenance_error") else []),
            "",
            volume_table(s["volumes"]),
        ]
        return "\n".join(lines)

    emit(args, st, text)
    return 0
