"""Cartridges, disc images and the backup catalog on RADOS (issue 29): tape and disc throughput, catalog commits.

    .venv-rados/bin/python -m tools.bench_rados_media --ceph-conf FILE --pool CEPHPOOL
        [--size 256M] [--jobs 20] [--fill 0,16M] [--json-out FILE]

Measured on an existing cluster (objects under a random prefix, removed at the end):
  tape write/read   TapeDrive over a Cartridge in the pool's RADOS file area (256 KiB blocks,
                    incompressible; the write ends with a filemark: a flush), and the same over a
                    local file in /var/tmp, in one run
  disc write/read   a DiscSide session of SIZE in 1 MiB writes (closed: synced, state replaced),
                    read back in 1 MiB reads, in the pool's sparse area ``optical`` and in a local
                    file; and one 4 KiB write far into a blank image: at 24 GiB in the sparse
                    area, at 2 GiB in the cartridges' dense area (which makes every stripe before it)
  catalog (a)       one backup job's catalog transactions (new job, running, a part, two volumes,
                    done: 6 commits) with the catalog in the cluster through libcephsqlite
  catalog (b)       the same with a local SQLite file copied whole to one RADOS object
                    (``write_full`` of ``serialize()``) after every commit: atomic and durable too
Both catalog designs are timed with the database holding about FILL bytes of older rows (a
backup client's file lists make a catalog large), to show how each scales.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

from vstor.backup.catalog import BackupCatalog
from vstor.backup.catalogdb import CephDatabases, sqlite_namespace
from vstor.clock import ManualClock
from vstor.media.cartridge import Cartridge
from vstor.media.mediatypes import disc_type
from vstor.media.optical import DiscSide
from vstor.media.tapedrive import MTREW, TapeDrive
from vstor.store.backend.files import FileArea, LocalFiles
from vstor.store.backend.rados.backend import RadosBackend, connect_cluster
from vstor.store.backend.statefiles import PoolFiles, local_files
from vstor.units import parse_size

BLOCK = 256 * 1024


def tape_mb_s(files: FileArea, size: int) -> dict[str, float]:
    """Write then read ``size`` bytes of 256 KiB blocks through a TapeDrive; MB/s each way."""
    block = os.urandom(BLOCK)
    cart = Cartridge("L/BENCH01L9.tape", "BENCH01L9", 2 * size, compress=False, files=files)
    drive = TapeDrive(cart, 0x60, True, False, 1 << 20)
    try:
        t0 = time.perf_counter()
        for _ in range(size // BLOCK):
            drive.write(block)
        drive.close(rewind=True)  # the filemark and its flush
        t1 = time.perf_counter()
        drive.op(MTREW, 1)
        got = 0
        while chunk := drive.read(BLOCK):
            got += len(chunk)
        t2 = time.perf_counter()
    finally:
        cart.close()
    assert got == size, (got, size)
    return {"write_mb_s": round(size / (t1 - t0) / 1e6, 1), "read_mb_s": round(size / (t2 - t1) / 1e6, 1)}


def disc_mb_s(files: FileArea, states: PoolFiles, size: int) -> dict[str, float]:
    """One disc session of ``size`` bytes in 1 MiB writes, then read back; MB/s each way."""
    block = os.urandom(1 << 20)
    disc = DiscSide(files, states, "L", "BENCHD1", disc_type("BD-R"), 0)
    try:
        t0 = time.perf_counter()
        for i in range(size >> 20):
            disc.write(i << 20, block)
        disc.close_session()  # the image synced, then the state replaced
        t1 = time.perf_counter()
        got = sum(len(disc.read(i << 20, 1 << 20)) for i in range(size >> 20))
        t2 = time.perf_counter()
    finally:
        disc.close()
    assert got == size, (got, size)
    return {"write_mb_s": round(size / (t1 - t0) / 1e6, 1), "read_mb_s": round(size / (t2 - t1) / 1e6, 1)}


def far_write(files: FileArea, name: str, pos: int) -> dict[str, float]:
    """Seconds for one 4 KiB write (and sync) at ``pos`` of a new file, and the objects it made."""
    f = files.open(name, create=True)
    t0 = time.perf_counter()
    f.pwrite(b"x" * 4096, pos)
    f.sync()
    seconds = time.perf_counter() - t0
    f.close()
    objects = len([o for o in files.io.list_objects() if o.key.startswith(name)])  # type: ignore[attr-defined]
    return {"offset_gib": pos >> 30, "seconds": round(seconds, 4), "objects": objects}


class CopiedCatalog(BackupCatalog):
    """Design (b): a local catalog whose whole database goes to one RADOS object after each commit."""

    def __init__(self, path: str, clock: ManualClock, io: Any) -> None:
        self.io = io
        super().__init__(path, clock)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with super()._tx() as c:
            yield c
        with self._lock:
            assert self._db is not None
            self.io.write_full("catalog.db", self._db.serialize())


def fill(cat: BackupCatalog, nbytes: int) -> None:
    """Older jobs with 1 KiB reasons, about ``nbytes`` in all."""
    rows = [("old", "full", "g", "done", "x" * 1024, 0.0, 0.0)] * (nbytes // 1100)
    with cat._tx() as c:  # one transaction: the filler is not what is measured
        c.executemany("INSERT INTO jobs(policy, level, source, status, reason, created, expires) "
                      "VALUES (?,?,?,?,?,?,?)", rows)


def job_commits(cat: BackupCatalog, jobs: int) -> float:
    """Milliseconds per commit over ``jobs`` jobs' catalog transactions (6 each)."""
    t0 = time.perf_counter()
    for i in range(jobs):
        job = cat.new_job("p", "full", "g", None, None, 1e9)
        cat.set_job(job, status="running", started=1.0)
        cat.add_part(job, 0, "VT0001L9", "lib", i + 1, 1, 40, 40 * BLOCK, "0" * 64)
        cat.add_volume(job, "a", 8 << 20, 8 << 20, "1" * 64)
        cat.add_volume(job, "b", 4 << 20, 4 << 20, "2" * 64)
        cat.set_job(job, status="done", ended=2.0, bytes=12 << 20)
    return (time.perf_counter() - t0) * 1000 / (6 * jobs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ceph-conf", required=True, help="the cluster's ceph.conf")
    ap.add_argument("--pool", required=True, help="an existing Ceph pool to write test objects in")
    ap.add_argument("--size", default="256M", help="bytes written to and read from tape (default 256M)")
    ap.add_argument("--jobs", type=int, default=20, help="backup jobs' worth of catalog commits (default 20)")
    ap.add_argument("--fill", default="0,16M", help="catalog sizes to measure at, comma-separated (default 0,16M)")
    ap.add_argument("--json-out", help="also write the results as JSON to this file")
    args = ap.parse_args()
    size = parse_size(args.size, "size")
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    cluster = connect_cluster(args.ceph_conf)
    backend = RadosBackend(cluster, args.pool, prefix, owns_cluster=True)
    tmp = tempfile.mkdtemp(prefix="vstor-bench-rmedia-", dir="/var/tmp")
    out: dict[str, Any] = {"size": size, "jobs": args.jobs}
    spaces = [f"{prefix}/media", sqlite_namespace(prefix), f"{prefix}/copied", f"{prefix}/optical", prefix]
    try:
        out["tape_rados"] = tape_mb_s(backend.file_area("media", ""), size)
        os.makedirs(os.path.join(tmp, "L"))
        out["tape_local"] = tape_mb_s(LocalFiles(tmp), size)
        print(f"tape, {size >> 20} MiB of 256 KiB blocks: RADOS {out['tape_rados']}, local file {out['tape_local']}")
        discs = backend.sparse_file_area("optical", "")
        out["disc_rados"] = disc_mb_s(discs, PoolFiles(backend).sub("media"), size)
        out["disc_local"] = disc_mb_s(LocalFiles(tmp), local_files(tmp), size)
        print(f"disc session, {size >> 20} MiB of 1 MiB writes: RADOS {out['disc_rados']}, "
              f"local file {out['disc_local']}")
        out["far_write_sparse"] = far_write(discs, "L/FAR.side0.img", 24 << 30)
        out["far_write_dense"] = far_write(backend.file_area("media", ""), "L/FAR.tape", 2 << 30)
        print(f"one 4 KiB write into a blank image: sparse area {out['far_write_sparse']}, "
              f"dense area {out['far_write_dense']}")
        io = cluster.open_ioctx(args.pool)
        io.set_namespace(spaces[2])
        dbs = CephDatabases(args.pool, spaces[1], args.ceph_conf)
        for i, fill_size in enumerate(parse_size(f, "fill") for f in args.fill.split(",")):
            clock = ManualClock()
            a = BackupCatalog(f"catalog{i}.db", clock, dbs)
            b = CopiedCatalog(os.path.join(tmp, f"catalog{i}.db"), clock, io)
            try:
                fill(a, fill_size)
                fill(b, fill_size)
                row = {"fill": fill_size, "a_ms_per_commit": round(job_commits(a, args.jobs), 2),
                       "b_ms_per_commit": round(job_commits(b, args.jobs), 2)}
            finally:
                a.close()
                b.close()
            out.setdefault("catalog", []).append(row)
            print(f"catalog holding {fill_size >> 20} MiB: (a) libcephsqlite {row['a_ms_per_commit']} ms/commit, "
                  f"(b) local file copied whole {row['b_ms_per_commit']} ms/commit")
        io.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with cluster.open_ioctx(args.pool) as io:
            for ns in spaces:
                io.set_namespace(ns)
                for obj in list(io.list_objects()):
                    io.remove_object(obj.key)
        backend.close()
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
