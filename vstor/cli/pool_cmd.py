"""vstor pool init | check (| migrate: migrate_cmd.py)"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from vstor.cli.common import add_json_arg, emit
from vstor.cli.migrate_cmd import add_migrate
from vstor.control.host.lock import PoolLock, daemon_pid
from vstor.control.poolfiles import warn_key_file
from vstor.errors import Busy, UsageError
from vstor.store.backend.location import is_rados
from vstor.store.superblock import DEFAULT_CHUNK, init_pool, load_key, load_superblock
from vstor.units import format_size, parse_size

if TYPE_CHECKING:
    from vstor.store.check import CheckReport


def register(sub: argparse._SubParsersAction) -> None:
    pool = sub.add_parser("pool", help="create and check pools").add_subparsers(dest="action", required=True)
    p = pool.add_parser("init", help="create a pool in an empty directory or on Ceph RADOS")
    p.add_argument("path", help="the new pool's directory (empty or not yet there), or rados://CEPHPOOL/PREFIX "
                                "to keep it in a Ceph pool")
    p.add_argument("--ceph-conf", help="for a rados:// pool: the cluster's ceph.conf (default $VSTOR_CEPH_CONF)")
    p.add_argument("--ceph-id", help="for a rados:// pool: the Ceph client id, without 'client.' (default admin)")
    p.add_argument("--attach", action="store_true",
                   help="for a rados:// pool that exists already: only make this host's state directory for it "
                        "(another host made the pool)")
    p.add_argument("--rados-timeout", type=int, metavar="SECONDS",
                   help="for a rados:// pool: how long this host's daemon waits for the cluster before an I/O "
                        "fails with EIO (rados_osd_op_timeout, rados_mon_op_timeout, client_mount_timeout; "
                        "default 30)")
    p.add_argument("--chunk-size", default=format_size(DEFAULT_CHUNK), help="map and discard unit (default 512K)")
    p.add_argument("--compress", choices=["lz4", "none"], default="none", help="compress data (default none)")
    p.add_argument("--encrypt", action="store_true", help="AES-256-GCM for all data (needs --key-file)")
    p.add_argument("--key-file", help="key file; created with a random key if it does not exist")
    p.add_argument("--segment-size", default="auto",
                   help="journal segment size, 16M to 4G (default auto: 256M, less on a filesystem under 16G)")
    add_json_arg(p)
    p.set_defaults(func=cmd_init)
    c = pool.add_parser("check", help="verify every chunk and the metadata (offline)")
    c.add_argument("path", help="the pool directory")
    c.add_argument("--key-file", help="also verify AES-GCM authentication with this key")
    c.add_argument("--repair", action="store_true",
                   help="mend what can be mended: rewrite a damaged superblock copy, checkpoint copy or "
                        "segment header, rebuild the maps from the journal when both checkpoint copies are "
                        "lost, and, if the newest segment is damaged inside acknowledged data, cut it there "
                        "(losing the writes after the damage); every repair is reported")
    add_json_arg(c)
    c.set_defaults(func=cmd_check)
    add_migrate(pool)


def cmd_init(args: argparse.Namespace) -> int:
    segment = None if args.segment_size == "auto" else parse_size(args.segment_size, "segment size")
    if is_rados(args.path):
        sb, created_key = _init_rados(args, segment)
        where, warnings = args.path, []
    else:
        sb, created_key = init_pool(args.path, parse_size(args.chunk_size, "chunk size"), args.compress,
                                    args.encrypt, args.key_file, segment)
        where = os.path.abspath(args.path)
        warnings = warn_key_file(args.path, sb.key_file if sb.encrypt else None)  # stderr and log/daemon.log
    result = {"pool": where, "uuid": sb.uuid, "chunk_size": sb.chunk_size,
              "segment_size": sb.segment_size,
              "compress": sb.compress, "encrypt": sb.encrypt, "key_file_created": created_key,
              "warnings": warnings}
    emit(args, result, lambda r: f"created pool {r['pool']} (chunk {format_size(r['chunk_size'])}, "
         f"segment {format_size(r['segment_size'])}, "
         f"compress {r['compress']}, encrypt {'on' if r['encrypt'] else 'off'})"
         + (f"\nnew key written to {sb.key_file}: keep a copy, the pool cannot be read without it"
            if created_key else ""))
    return 0


def _init_rados(args: argparse.Namespace, segment: int | None) -> tuple:
    """pool init rados://CEPHPOOL/PREFIX: the superblock and checkpoints as RADOS objects."""
    from vstor.store.backend.location import open_backend, parse_rados
    from vstor.store.backend.stub import state_dir, write_stub
    from vstor.store.superblock import init_backend_pool, load_superblock_from
    parse_rados(args.path)  # a bad location is a usage error before any connection
    if args.rados_timeout is not None and not 1 <= args.rados_timeout <= 3600:
        raise UsageError(f"--rados-timeout {args.rados_timeout}: give 1 to 3600 seconds")
    with open_backend(args.path, args.ceph_conf, args.ceph_id, timeout=args.rados_timeout) as backend:
        if args.attach:
            made = load_superblock_from(backend), False
        else:
            made = init_backend_pool(backend, parse_size(args.chunk_size, "chunk size"), args.compress,
                                     args.encrypt, args.key_file, segment)
    write_stub(state_dir(args.path), args.path, args.ceph_conf or os.environ.get("VSTOR_CEPH_CONF"), args.ceph_id,
               timeout=args.rados_timeout)
    return made


def cmd_check(args: argparse.Namespace) -> int:
    from vstor.control.ops.status import record_check
    from vstor.store.backend.statefiles import PoolFiles
    from vstor.store.backend.stub import backend_for, resolve
    from vstor.store.check import check_pool  # imported here: every other command starts faster
    from vstor.store.journal.consumers import consumer_problems
    from vstor.store.store import Store
    from vstor.store.superblock import repair_superblock
    args.path = resolve(args.path)  # a rados:// pool: its state directory on this host
    sb = load_superblock(args.path)
    pid = daemon_pid(args.path)
    if pid is not None:
        raise Busy(f"the array is running (pid {pid}); stop it before 'pool check'")
    key = load_key(sb, args.key_file) if (sb.encrypt and (args.key_file or os.path.exists(sb.key_file))) else None
    repairs: list[str] = []
    with PoolLock(args.path):
        rep = _check(Store, check_pool, args.path, sb, key)
        if args.repair and not rep.clean:
            repairs = repair_superblock(args.path)
            with backend_for(args.path) as backend:  # the pool's files, or RADOS for a state directory
                consumers_bad = bool(consumer_problems(PoolFiles(backend).sub("meta")))
            repaired = Store.open(args.path, args.key_file, salvage=True)
            repairs += _what_recovery_did(repaired.recovery)
            if consumers_bad:
                repaired.consumers.rewrite()
                repairs.append("rewrote both copies of the journal consumer positions from the valid one")
            repaired.close()
            rep = _check(Store, check_pool, args.path, load_superblock(args.path), key)
    result = {"clean": rep.clean, "problems": rep.problems, "notes": rep.notes, "repairs": repairs,
              "records": rep.records, "extents": rep.extents, "bytes_verified": rep.bytes_verified}
    with backend_for(args.path) as backend:
        record_check(PoolFiles(backend), result)  # for 'vstor status'
    if args.json:
        print(json.dumps(result, indent=2))
        return 0 if rep.clean else 1
    for r in repairs:
        print(f"repair: {r}")
    for pr in rep.problems:
        print(f"problem: {pr}")
    for n in rep.notes:
        print(f"note: {n}")
    print(f"{'clean' if rep.clean else 'PROBLEMS FOUND'}: {rep.records} records, {rep.extents} extents, "
          f"{format_size(rep.bytes_verified, approx=True)} verified")
    if not rep.clean:
        print("'vstor pool check --repair' mends what can be mended exactly and says what it cannot"
              if not args.repair else "repair could not mend these: restore the damaged volumes from a "
              "backup or a replica")
    return 0 if rep.clean else 1


def _check(store_cls: type, check_pool: Callable, pool: str, sb: object, key: bytes | None) -> CheckReport:
    store = store_cls(pool, sb, key)
    try:
        report: CheckReport = check_pool(store)
        return report
    finally:
        store.journal.close()


def _what_recovery_did(recovery: dict) -> list[str]:
    out = [f"rewrote the damaged header of journal segment {s}" for s in recovery.get("headers_rewritten", [])]
    out += [f"worked around: {d}; both checkpoint copies rewritten" for d in recovery.get("damage", [])]
    if recovery.get("rebuilt"):
        out.append(f"rebuilt the volume maps from the whole journal ({recovery['records']} records)")
    cut = recovery.get("salvaged")
    if cut:
        out.append(f"cut segment {cut['segment']} at offset {cut['offset']} ({cut['reason']}); acknowledged "
                   f"writes recorded between offsets {cut['offset']} and {cut['durable_up_to']} of that "
                   "segment, and all later ones in it, are lost")
    return out
