"""vstor pool migrate LOCALDIR rados://CEPHPOOL/PREFIX (registered by pool_cmd under ``pool``)."""

from __future__ import annotations

import argparse
import os
import sys

from vstor.cli.common import add_json_arg, emit
from vstor.control.host.lock import PoolLock, daemon_pid
from vstor.errors import Busy, UsageError
from vstor.units import format_size

__all__ = ["add_migrate", "cmd_migrate"]


def add_migrate(pool: argparse._SubParsersAction) -> None:
    m = pool.add_parser("migrate", help="copy a local pool to Ceph RADOS, every object verified")
    m.add_argument("source", help="the local pool's directory (no daemon may run on it); it is left unchanged")
    m.add_argument("dest", help="rados://CEPHPOOL/PREFIX: where the copy goes (empty, or an unfinished "
                                "migrate of this pool with --resume)")
    m.add_argument("--ceph-conf", help="the cluster's ceph.conf (default $VSTOR_CEPH_CONF)")
    m.add_argument("--ceph-id", help="the Ceph client id, without 'client.' (default admin)")
    m.add_argument("--resume", action="store_true",
                   help="finish a migrate of this pool that was interrupted: keep the segments already "
                        "copied and verified, copy the rest")
    add_json_arg(m)
    m.set_defaults(func=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    from vstor.faults import Faults
    from vstor.store.backend.location import CEPH_CONF_ENV, is_rados, open_backend, parse_rados
    from vstor.store.backend.stub import state_dir
    from vstor.store.migrate.run import local_pool, migrate_pool
    if is_rados(args.source):
        raise UsageError(f"{args.source} is not a local pool directory: pool migrate copies a local pool to RADOS")
    if not is_rados(args.dest):
        raise UsageError(f"the destination {args.dest} is not rados://CEPHPOOL/PREFIX")
    parse_rados(args.dest)  # a bad location is a usage error before any connection
    source = os.path.abspath(args.source)
    local_pool(source)  # NotFound, or UsageError for a RADOS pool's state directory, before any lock
    pid = daemon_pid(source)
    if pid is not None:
        raise Busy(f"the array is running on {source} (pid {pid}); stop it before 'pool migrate'")
    conf = args.ceph_conf or os.environ.get(CEPH_CONF_ENV)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    faults = Faults.from_env()  # VSTOR_FAULTS: migrate.segment, migrate.superblock, backend.*
    with PoolLock(source), open_backend(args.dest, conf, args.ceph_id, faults) as dest:
        result = migrate_pool(source, args.dest, dest, state_dir(args.dest), conf, args.ceph_id,
                              args.resume, faults, emit=progress)
    emit(args, result, lambda r: f"migrated {r['source']} to {r['pool']}: {r['summary']}, verified, at "
         f"{format_size(r['bytes_per_second'], approx=True)}/s; the local pool is unchanged (delete it once "
         f"the RADOS pool serves)")
    return 0
