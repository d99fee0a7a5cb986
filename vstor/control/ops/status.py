"""``vstor status``: one answer to "is my array healthy?" (mixed into PoolService), and what
can be said of a stopped pool without opening it.

Online (the daemon's ``status.overview``): the daemon, the pool's space and thin over-commit,
volumes with their allocation and open handles, groups with their last snapshot, pairs,
libraries, the last and next backup jobs, and warnings.

Offline (:func:`offline_overview`): read-only and without the pool lock, from files that are
only ever replaced atomically: the superblock, the newest valid checkpoint copy (volumes,
groups and snapshots as of that checkpoint; allocations need the maps and the journal, so
they are not shown), the tail of the daemon log (how the last run ended) and the result of
the last ``pool check`` (the state file ``meta/last_check.json``, written by ``pool check``:
a file of the pool directory, or an object of a RADOS pool).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

from vstor.store.backend.statefiles import PoolFiles
from vstor.store.catalog.groups import Catalog
from vstor.store.catalog.volumes import VolumeTable
from vstor.store.journal.outage import outage_line

NEARLY_FULL = 0.90  # warn when this share of the pool's filesystem is used
LAST_CHECK = "last_check.json"
LAST_CHECK_FILE = "meta/" + LAST_CHECK  # its name among the pool's state files


class StatusOps:
    store: Any
    mount: str | None
    fs: Any
    replication: Any
    started: float

    def op_status_overview(self) -> dict:
        st = self.store
        with st.locked():
            table, catalog = st.state.table, st.state.catalog
            volumes, groups = describe_catalog(table, catalog)
        in_use = self.fs.volumes_in_use() if self.fs else {}
        for v in volumes:
            v["allocated"] = st.volume_usage(v["id"])
            v["open_handles"] = in_use.get(v["id"], 0)
        usage = st.usage()
        pool = pool_space(st.pool, usage["journal_bytes"], usage["free_bytes"], volumes)
        pool |= {"path": os.path.abspath(st.pool), "uuid": st.sb.uuid}
        endpoint = self.replication.endpoint() if self.replication else None
        pairs = self.replication.status() if self.replication else []
        libraries = self.op_library_list()  # type: ignore[attr-defined]
        backup = self._backup_summary()
        out = {"running": True, "daemon": {"pid": os.getpid(), "started": self.started,
                                           "uptime": time.time() - self.started, "mount": self.mount},
               "pool": pool, "volumes": volumes, "groups": groups, "pairs": pairs, "libraries": libraries,
               "backup": backup, "last_check": last_check(st.files)}
        warnings = space_warnings(pool)
        if st.journal.failed:
            warnings.append(f"journal FAILED: {st.journal.failed}; the array is read-only (see the daemon log)")
        elif st.journal.outage is not None:
            warnings.append(outage_line(st.journal.outage.describe()))
        listener = (endpoint or {}).get("listener")
        if listener and listener["state"] != "serving":
            warnings.append(f"replication listener {listener['address']} is {listener['state']}")
        for why in (st.recovery or {}).get("damage", []):
            warnings.append(f"recovery worked around damage at start: {why} (run 'vstor pool check' when stopped)")
        if (st.recovery or {}).get("salvaged"):
            warnings.append("recovery cut a damaged journal segment at start: some acknowledged writes are lost")
        if getattr(self.reclaimer, "last_error", ""):  # type: ignore[attr-defined]
            warnings.append(f"maintenance failing: {self.reclaimer.last_error}")  # type: ignore[attr-defined]
        for p in pairs:
            if p["state"] not in ("PAIR", "COPY", "RESYNC", "SMPL") or not p.get("connected", True):
                warnings.append(f"pair {p['group']} is {p['state']}"
                                + ("" if p.get("connected") else ", not connected")
                                + (f": {p['reason']}" if p.get("reason") else ""))
        warnings += backup.pop("warnings")
        warnings += check_warnings(out["last_check"])
        out["warnings"] = warnings
        return out

    def _backup_summary(self) -> dict:
        engine = self._backup()  # type: ignore[attr-defined]
        jobs = engine.catalog.jobs()
        last = next((j for j in jobs if j["status"] not in ("running", "waiting")), None)
        running = [j for j in jobs if j["status"] in ("running", "waiting")]
        nexts = [(t, p["name"]) for p in engine.catalog.policies()
                 if (t := engine.scheduler.next_for(p)) is not None]
        nxt = min(nexts) if nexts else None
        warnings = [f"backup job {j['id']} ({j['policy']}) failed verify: {j.get('verify_reason') or '?'}"
                    for j in jobs if j.get("verify") == "failed"]
        if last is not None and last["status"] == "failed":
            warnings.append(f"the last backup job {last['id']} ({last['policy']}) failed: {last['reason']}")
        return {"last": last, "running": running, "next": {"policy": nxt[1], "time": nxt[0]} if nxt else None,
                "policies": len(engine.catalog.policies()), "warnings": warnings}


def describe_catalog(table: VolumeTable, catalog: Catalog) -> tuple[list[dict], list[dict]]:
    """Volumes (with their group's name) and groups (with their last snapshot) from the table
    and catalog, live or from a checkpoint."""
    names = {g.id: g.name for g in catalog.groups.values()}
    volumes = [{"id": v.id, "name": v.name, "size": v.size, "group": names.get(v.group)}
               for v in sorted(table.by_id.values(), key=lambda v: v.name)]
    groups = []
    for g in sorted(catalog.groups.values(), key=lambda g: g.name):
        snaps = catalog.snapshots_of("group", g.id)
        last = snaps[-1] if snaps else None
        groups.append({"name": g.name, "volumes": sorted(v.name for v in table.by_id.values() if v.group == g.id),
                       "snapshots": len(snaps),
                       "last_snapshot": {"name": last.name, "created": last.created} if last else None})
    return volumes, groups


def pool_space(pool: str, used: int | None, free: int, volumes: list[dict]) -> dict:
    """Space of the pool: ``used`` by the journal (None offline: not measured), ``free`` in its
    filesystem; ``overcommit`` is the volumes' total size over what the pool can hold."""
    if used is None:
        used = sum(e.stat().st_size for e in os.scandir(os.path.join(pool, "journal")) if e.is_file()) \
            if os.path.isdir(os.path.join(pool, "journal")) else 0
    capacity = used + free
    provisioned = sum(v["size"] for v in volumes)
    fs = shutil.disk_usage(pool)
    return {"used": used, "free": free, "capacity": capacity, "provisioned": provisioned,
            "overcommit": provisioned / capacity if capacity else 0.0,
            "fs_used_fraction": (fs.total - fs.free) / fs.total if fs.total else 0.0}


def space_warnings(pool: dict) -> list[str]:
    if pool["fs_used_fraction"] >= NEARLY_FULL:
        return [f"the pool's filesystem is {pool['fs_used_fraction']:.0%} full"]
    return []


def record_check(files: PoolFiles, result: dict) -> None:
    """Remember the outcome of ``pool check`` for ``vstor status`` (best effort); ``files``: the
    pool's state files (vstor/store/backend/statefiles.py)."""
    summary = {"time": time.time(), "clean": result["clean"], "problems": len(result["problems"]),
               "repairs": len(result["repairs"]), "bytes_verified": result["bytes_verified"]}
    try:
        files.write(LAST_CHECK_FILE, json.dumps(summary).encode())
    except OSError:
        pass


def last_check(files: PoolFiles) -> dict | None:
    try:
        raw = files.read(LAST_CHECK_FILE)
        return None if raw is None else json.loads(raw)
    except (OSError, ValueError):
        return None


def check_warnings(check: dict | None) -> list[str]:
    if check and not check["clean"]:
        return [f"the last pool check found {check['problems']} problem(s)"]
    return []


def last_run(pool: str, tail_bytes: int = 64 << 10) -> dict | None:
    """How the last daemon run ended, from the tail of its log: it logs "serving pool" at start
    and "stopped" as the very last thing on its way out. A start without a "stopped" from the
    same process ended without its shutdown path: killed or crashed."""
    from vstor.control.poolfiles import log_path

    try:
        with open(log_path(pool), "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - tail_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    start = stop = None
    for line in lines:
        parts = line.split(" ", 5)  # date time,ms pid name level message
        if len(parts) < 6:
            continue
        if parts[5].startswith("serving pool"):
            start, stop = parts, None
        elif parts[5] == "stopped" and start is not None and parts[2] == start[2]:
            stop = parts
    if start is None:
        return None
    return {"pid": int(start[2]) if start[2].isdigit() else None, "started": _stamp(start),
            "stopped": _stamp(stop) if stop else None, "clean": stop is not None}


def _stamp(parts: list[str]) -> str:
    return f"{parts[0]} {parts[1].split(',')[0]}"  # the log's local time, without the milliseconds


def offline_overview(pool: str) -> dict:
    """What a stopped pool's files say, read without the pool lock (see the module docstring)."""
    from vstor.store.backend.stub import backend_for
    from vstor.store.maintenance.checkpoint import read_checkpoints
    from vstor.store.superblock import load_superblock

    sb = load_superblock(pool)
    with backend_for(pool) as backend:  # the pool's files, or RADOS for a state directory
        ckset = read_checkpoints(backend, sb.uuid_bytes)
        check = last_check(PoolFiles(backend))
    ck = ckset.newest
    volumes: list[dict] = []
    groups: list[dict] = []
    if ck is not None:
        volumes, groups = describe_catalog(VolumeTable.from_json(ck.meta["table"]),
                                           Catalog.from_json(ck.meta.get("catalog")))
    space = pool_space(pool, None, shutil.disk_usage(pool).free, volumes)
    space |= {"path": os.path.abspath(pool), "uuid": sb.uuid}
    run = last_run(pool)
    warnings = space_warnings(space) + check_warnings(check)
    if ck is None:
        warnings.append("no valid checkpoint copy: the volume list is unknown until the pool is opened")
    warnings += [f"checkpoint {name}: {why}" for name, why in ckset.damaged.items()]
    if run is not None and not run["clean"]:
        warnings.append(f"the last run (pid {run['pid']}, started {run['started']}) did not stop cleanly: "
                        "the next start replays the journal")
    return {"running": False, "daemon": None, "pool": space, "volumes": volumes, "groups": groups,
            "checkpoint": {"generation": ck.generation, "position": [ck.segno, ck.pos]} if ck else None,
            "last_run": run, "last_check": check, "warnings": warnings}
