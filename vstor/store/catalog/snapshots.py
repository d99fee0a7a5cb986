"""Group and snapshot operations on an open Store: the admin-facing layer over catalog
events, plus space accounting, diffs and the policy runner.

Every change is one catalog event (Store.event), so it is atomic across a crash. Taking a
snapshot holds the store lock only while its event is appended and the member maps are
shared (O(leaves), no data copied), which is the whole write pause.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from vstor.errors import Refused, UsageError
from vstor.store.catalog import compliance
from vstor.store.catalog.groups import Policy, Snapshot
from vstor.store.catalog.policy import to_prune, trigger, written_since
from vstor.store.maps.accounting import account, changed_ranges
from vstor.store.maps.chunkmap import VolumeMap
from vstor.store.state import PoolState
from vstor.store.store import Store

log = logging.getLogger("vstor.snapshots")


def describe(store: Store, snap: Snapshot, sizes: dict[tuple[int, int], tuple[int, int]] | None = None) -> dict:
    d = {"id": snap.id, "name": snap.name, "owner": snap.owner_name, "kind": snap.kind, "created": snap.created,
         "seq": snap.seq, "auto": snap.auto,
         "volumes": [{"name": m.name, "id": m.vid, "size": m.size} for m in snap.members]}
    if sizes is not None:
        d["exclusive"] = sum(sizes[(snap.id, m.vid)][0] for m in snap.members)
        d["shared"] = sum(sizes[(snap.id, m.vid)][1] for m in snap.members)
    return d


def create(store: Store, owner: str, name: str | None = None, auto: bool = False) -> dict:
    ev = store.event(lambda st: st.catalog.make_snapshot(st.table, st.group_seq, owner, name,
                                                         store.clock.time(), auto, st.written))
    with store.locked():
        return describe(store, store.state.catalog.snaps[ev["sid"]])


def get(store: Store, owner: str, name: str) -> Snapshot:
    with store.locked():
        return store.state.catalog.snapshot(store.state.table, owner, name)


def delete(store: Store, owner: str, name: str) -> dict:
    """Delete snapshot OWNER/NAME; Refused while a compliance lock holds it (compliance.py)."""
    snap = get(store, owner, name)
    with compliance.GUARD:
        compliance.refuse_if_locked(store.files, store.clock, (compliance.snapshot_key(snap.id),),
                                    f"snapshot {owner}/{name}", "deleted")
        store.event(lambda st: st.catalog.make_snapshot_delete(st.catalog.snapshot(st.table, owner, name)))
    return describe(store, snap) | {"deleted": True}


def rollback(store: Store, owner: str, name: str) -> dict:
    snap = get(store, owner, name)
    ev = store.event(lambda st: st.catalog.make_rollback(st.table, st.group_seq,
                                                         st.catalog.snapshot(st.table, owner, name),
                                                         store.clock.time(), st.written))
    return describe(store, snap) | {"rolled_back": True, "safety_snapshot": ev["events"][0]["name"]}


def clone(store: Store, owner: str, name: str, prefix: str) -> list[str]:
    ev = store.event(lambda st: st.catalog.make_clone(st.table, st.catalog.snapshot(st.table, owner, name),
                                                      prefix, store.clock.time()))
    return [e["name"] for e in ev["events"]]


def sizes(store: Store, vids: set[int] | None = None, totals: bool = True) -> tuple[dict, dict[int, dict]]:
    """Exclusive and shared bytes of every snapshot member map, keyed (sid, vid), and per volume
    {"allocated", "snapshots", "total"}: its live data, what only its snapshots hold, the sum.
    ``totals=False`` skips the per-volume part (its union of every version is most of the work)."""
    out: dict[tuple[int, int], tuple[int, int]] = {}
    per_volume: dict[int, dict] = {}
    plan: list[tuple[int, bool, list]] = []

    def pick(st: PoolState) -> list[list[VolumeMap]]:
        groups = []
        for vid in sorted(vids if vids is not None else set(st.maps) | {k[1] for k in st.snap_maps}):
            live = [st.maps[vid]] if vid in st.maps else []
            keys = [k for k in st.snap_maps if k[1] == vid]
            # Everything else that may share data with them: clones made from them, and theirs.
            others = [vm for k, vm in st.snap_maps.items() if k[1] != vid and vid in vm.lineage]
            others += [vm for v, vm in st.maps.items() if v != vid and vid in vm.lineage]
            if live or keys:
                plan.append((vid, bool(live), keys))
                groups.append(live + [st.snap_maps[k] for k in keys] + others)
        return groups

    with store.frozen_maps(pick) as groups:  # the work runs without the store lock
        for (vid, has_live, keys), maps in zip(plan, groups, strict=True):
            nlive = 1 if has_live else 0
            mine = range(nlive, nlive + len(keys))  # the snapshots: the only exclusive bytes shown
            result, union = account(maps, range(nlive + len(keys)) if totals else (), want=mine)
            out.update(zip(keys, result[nlive : nlive + len(keys)], strict=True))
            if has_live and totals:
                allocated = maps[0].mapped_bytes
                per_volume[vid] = {"allocated": allocated, "snapshots": union - allocated, "total": union}
    return out, per_volume


def listing(store: Store, owner: str | None = None) -> list[dict]:
    with store.locked():
        cat, table = store.state.catalog, store.state.table
        if owner is None:
            snaps = sorted(cat.snaps.values(), key=lambda s: (s.owner_name, s.created, s.id))
        else:
            snaps = cat.snapshots_of(*cat.owner(table, owner))
    vids = {m.vid for s in snaps for m in s.members}
    size_map, _ = sizes(store, vids, totals=False)
    return [describe(store, s, size_map) for s in snaps]


def diff(store: Store, owner: str, frm: str, to: str) -> list[dict]:
    with store.locked():
        a, b = get(store, owner, frm), get(store, owner, to)
        out = []
        for m in b.members:
            old = store.state.snap_maps.get((a.id, m.vid))
            new = store.state.snap_maps[(b.id, m.vid)]
            if old is None:  # joined the group after FROM: everything it holds is new
                old = store.state.new_map()
            ranges = changed_ranges(old, new)
            out.append({"volume": m.name, "id": m.vid, "ranges": [list(r) for r in ranges],
                        "changed_bytes": sum(e - s for s, e in ranges)})
        return out


def set_policy(store: Store, owner: str, every: float | None, keep_last: int, keep_daily: int,
               **more: object) -> dict:
    """Set (``every`` None: remove) the policy of ``owner``. ``more``: the other Policy fields
    (after_written, min_interval, pre, post, hook_timeout). ``every`` 0 with ``after_written``:
    a threshold-only policy."""
    policy = None if every is None else Policy(every, keep_last, keep_daily, **more)  # type: ignore[arg-type]
    ev = store.event(lambda st: st.catalog.make_policy(st.table, owner, policy, st.written))
    return {"owner": owner, "policy": ev["policy"]}


# take(owner, policy, trigger, written_since) -> a line for the log, or None if nothing started
Take = Callable[[str, Policy, str, int], "str | None"]


def run_policies(store: Store, in_use: set[int] = frozenset(), take: Take | None = None) -> list[str]:  # type: ignore[assignment]
    """Take the automatic snapshots that are due (by time, or by bytes written: policy.trigger)
    and prune what retention drops (except the snapshots in ``in_use``, whose images are
    open). The maintenance loop calls it; each step is one event, so a crash between steps
    leaves a state the next run completes. ``take`` takes a due snapshot (policyrun.py: with
    the policy's pre and post commands); by default it is taken here. Returns what was done,
    for the log."""
    done = []
    now = store.clock.time()
    cc, locks = compliance.for_pool(store.files, store.clock)
    ctime = cc.checkpoint()  # also the compliance clock's periodic checkpoint
    held = {k for k, v in locks.all().items() if v["until"] > ctime}
    with store.locked():
        st = store.state
        cat, table = st.catalog, st.table
        work = []
        for key, policy in cat.policies.items():
            kind, oid_text = key.split(":")
            oid = int(oid_text)
            owner = cat.groups[oid].name if kind == "group" else table.by_id[oid].name
            snaps = cat.snapshots_of(kind, oid)
            since = written_since(policy, snaps, st.written, cat.members(table, kind, oid))
            why = trigger(policy, [s for s in snaps if s.auto], now, since)
            work.append((kind, oid, owner, policy, why, since))
    for kind, oid, owner, policy, why, since in work:
        if why:
            try:
                if take is not None:
                    line = take(owner, policy, why, since)
                    if line:
                        done.append(line)
                else:
                    done.append(f"created {owner}/{create(store, owner, auto=True)['name']} ({why})")
            except UsageError as e:  # e.g. an empty group: nothing to snapshot yet
                log.warning("policy for %s: %s", owner, e)
        autos = [s for s in store.state.catalog.snapshots_of(kind, oid) if s.auto]
        for snap in to_prune(policy, autos):
            if snap.id in in_use or compliance.snapshot_key(snap.id) in held:
                continue  # open, or under a compliance lock: retention passes it over
            try:
                delete(store, owner, snap.name)
            except Refused:  # locked since ``held`` was read
                continue
            done.append(f"pruned {owner}/{snap.name}")
    return done


def image(store: Store, owner: str, snap: str, volume: str) -> tuple[int, int, int, float]:
    """(snapshot id, volume id, size, created) of the image OWNER/SNAP/VOLUME."""
    s = get(store, owner, snap)
    m = s.member(volume)
    return s.id, m.vid, m.size, s.created


def tree(store: Store) -> list[list[str]]:
    """[owner, snapshot, volume] of every snapshot image (the FUSE snapshots/ directory)."""
    with store.locked():
        return [[s.owner_name, s.name, m.name] for s in store.state.catalog.snaps.values() for m in s.members]


def extents(store: Store, sid: int, vid: int) -> list[tuple[int, int]]:
    """(offset, length) of the mapped ranges of snapshot ``sid``'s image of volume ``vid``, merged
    and in order: what a full backup of the image must hold (the rest reads as zeros)."""
    with store.locked():
        snap = store.state.catalog.snaps[sid]
        size = next(m.size for m in snap.members if m.vid == vid)
        mapped = store.state.snap_maps[(sid, vid)].lookup(0, size)
    out: list[tuple[int, int]] = []
    for s, e, _loc in mapped:
        if out and out[-1][0] + out[-1][1] == s:
            out[-1] = (out[-1][0], e - out[-1][0])
        else:
            out.append((s, e - s))
    return out
