"""Consistency groups, snapshots and snapshot policies. Pure state, no I/O.

Like the volume table, every change is an *event* (a dict) that the store journals as a
REC_VOLUME record before applying it, and that recovery applies again in journal order.
``make_*`` validate a request and build its event; :meth:`Catalog.apply` changes the
catalog; PoolState adjusts the chunk maps. Group and volume names share one namespace,
because ``snapshot create G|VOL`` takes either. Ids are never reused.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from vstor.errors import AlreadyExists, Busy, NotFound, UsageError
from vstor.store.catalog.volumes import DEFAULT_GROUP, VolumeTable, check_name


@dataclass
class Group:
    id: int
    name: str
    created: float = 0.0


@dataclass
class Member:
    vid: int
    name: str
    size: int
    lineage: list[int]
    written: int = 0  # PoolState.written of the volume at the cut (0 in snapshots before 2026-12)


@dataclass
class Snapshot:
    id: int
    name: str
    kind: str  # "group" or "volume"
    owner: int  # group id or volume id
    owner_name: str
    created: float
    seq: int  # the group's sequence number at the cut: the snapshot holds writes 1..seq
    members: list[Member]
    auto: bool = False  # taken by a policy; retention prunes only these

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise NotFound(f"snapshot {self.owner_name}/{self.name} has no volume {name!r}")

    def member_by_id(self, vid: int) -> Member:
        return next(m for m in self.members if m.vid == vid)


@dataclass
class Policy:
    every: float  # seconds between snapshots; 0: no time schedule (only after_written)
    keep_last: int = 0
    keep_daily: int = 0
    # The fields below came with application-consistent snapshots (docs/formats.md); a policy
    # journaled without them gets these defaults.
    after_written: int = 0  # also snapshot once this many bytes were written since the last one; 0: off
    min_interval: float = 60.0  # at most one threshold snapshot per this many seconds
    pre: str = ""  # shell command run before each automatic snapshot ("" none); failing aborts it
    post: str = ""  # shell command run after it, always
    hook_timeout: float = 60.0  # seconds each of pre and post may take
    base: dict[str, int] = field(default_factory=dict, compare=False)  # str(vid) -> written when set


MIN_EVERY = 60.0
MIN_THRESHOLD_INTERVAL = 1.0


@dataclass
class Catalog:
    groups: dict[int, Group] = field(default_factory=dict)
    snaps: dict[int, Snapshot] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)  # owner key ("group:3", "volume:7") -> policy
    next_gid: int = 1
    next_sid: int = 1

    # -- lookups ---------------------------------------------------------------------------
    def group(self, name: str) -> Group:
        g = self.find_group(name)
        if g is None:
            raise NotFound(f"no group named {name!r} (see 'vstor group list')")
        return g

    def find_group(self, name: str) -> Group | None:
        return next((g for g in self.groups.values() if g.name == name), None)

    def owner(self, table: VolumeTable, name: str) -> tuple[str, int]:
        """Resolve ``G|VOL`` to ("group", gid) or ("volume", vid)."""
        g = self.find_group(name)
        if g is not None:
            return "group", g.id
        v = table.find(name)
        if v is not None:
            return "volume", v.id
        raise NotFound(f"no group or volume named {name!r} (see 'vstor group list', 'vstor volume list')")

    def snapshots_of(self, kind: str, owner: int) -> list[Snapshot]:
        return sorted((s for s in self.snaps.values() if s.kind == kind and s.owner == owner),
                      key=lambda s: (s.created, s.id))

    def snapshot(self, table: VolumeTable, owner_name: str, name: str) -> Snapshot:
        kind, oid = self.owner(table, owner_name)
        for s in self.snaps.values():
            if s.kind == kind and s.owner == oid and s.name == name:
                return s
        raise NotFound(f"no snapshot {name!r} of {owner_name!r} (see 'vstor snapshot list {owner_name}')")

    def members(self, table: VolumeTable, kind: str, oid: int) -> list[int]:
        if kind == "volume":
            return [oid]
        return sorted(v.id for v in table.by_id.values() if v.group == oid)

    # -- group events ----------------------------------------------------------------------
    def make_group_create(self, table: VolumeTable, name: str, volumes: list[str], now: float) -> dict:
        check_name(name, "group")
        if self.find_group(name) or table.find(name):
            raise AlreadyExists(f"the name {name!r} is already used by a group or volume")
        events: list[dict] = [{"op": "group_create", "gid": self.next_gid, "name": name, "created": now}]
        for vname in volumes:
            events.append(self._set_group(table, vname, self.next_gid, name))
        return {"op": "batch", "events": events}

    def make_group_add(self, table: VolumeTable, group: str, volume: str) -> dict:
        return self._set_group(table, volume, self.group(group).id, group)

    def _set_group(self, table: VolumeTable, volume: str, gid: int, gname: str) -> dict:
        vol = table.get(volume)
        if vol.group == gid:
            raise AlreadyExists(f"volume {volume!r} is already in group {gname!r}")
        if vol.group != DEFAULT_GROUP:
            raise Busy(f"volume {volume!r} is in group {self.groups[vol.group].name!r}; remove it from that "
                       "group first")
        return {"op": "set_group", "id": vol.id, "group": gid}

    def make_group_remove(self, table: VolumeTable, group: str, volume: str) -> dict:
        g, vol = self.group(group), table.get(volume)
        if vol.group != g.id:
            raise NotFound(f"volume {volume!r} is not in group {group!r}")
        return {"op": "set_group", "id": vol.id, "group": DEFAULT_GROUP}

    def make_group_delete(self, table: VolumeTable, group: str) -> dict:
        g = self.group(group)
        if self.members(table, "group", g.id):
            raise Busy(f"group {group!r} still has volumes; remove them first with 'vstor group remove'")
        if self.snapshots_of("group", g.id):
            raise Busy(f"group {group!r} has snapshots; delete them first")
        return {"op": "group_delete", "gid": g.id}

    def make_policy(self, table: VolumeTable, owner: str, policy: Policy | None,
                    written: dict[int, int] | None = None) -> dict:
        """``written``: PoolState.written, recorded as the policy's baseline until its first snapshot."""
        kind, oid = self.owner(table, owner)
        if policy is not None:
            check_policy(policy)
            policy.base = {str(v): (written or {}).get(v, 0) for v in self.members(table, kind, oid)}
        return {"op": "policy_set", "owner": f"{kind}:{oid}", "policy": asdict(policy) if policy else None}

    # -- snapshot events -------------------------------------------------------------------
    def make_snapshot(self, table: VolumeTable, group_seq: dict[int, int], owner: str, name: str | None,
                      now: float, auto: bool = False, written: dict[int, int] | None = None) -> dict:
        kind, oid = self.owner(table, owner)
        vids = self.members(table, kind, oid)
        if not vids:
            raise UsageError(f"group {owner!r} has no volumes to snapshot; add some with 'vstor group add'")
        taken = {s.name for s in self.snapshots_of(kind, oid)}
        if name is None:
            base = ("auto-" if auto else "") + time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
            name = _unique(base, taken)
        check_name(name, "snapshot")
        if name in taken:
            raise AlreadyExists(f"{owner!r} already has a snapshot named {name!r}")
        gid = oid if kind == "group" else table.by_id[oid].group
        members = [asdict(Member(v, table.by_id[v].name, table.by_id[v].size, table.lineage(v),
                                 (written or {}).get(v, 0))) for v in vids]
        return {"op": "snap_create", "sid": self.next_sid, "name": name, "kind": kind, "owner": oid,
                "owner_name": owner, "created": now, "seq": group_seq.get(gid, 0), "members": members,
                "auto": auto}

    def make_snapshot_delete(self, snap: Snapshot) -> dict:
        return {"op": "snap_delete", "sid": snap.id}

    def make_rollback(self, table: VolumeTable, group_seq: dict[int, int], snap: Snapshot, now: float,
                      written: dict[int, int] | None = None) -> dict:
        """Roll back the snapshot's volumes that are still members of its group (or the volume),
        after a safety snapshot of the current members, which therefore covers all of them."""
        current = set(self.members(table, snap.kind, snap.owner))
        vids = [m.vid for m in snap.members if m.vid in current]
        if not vids:
            raise UsageError(f"none of the volumes of snapshot {snap.owner_name}/{snap.name} is still in "
                             f"{snap.owner_name!r}; clone the snapshot instead with 'vstor snapshot clone'")
        safety = self.make_snapshot(table, group_seq, snap.owner_name, None, now, written=written)
        safety["name"] = _unique(f"pre-rollback-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}",
                                 {s.name for s in self.snapshots_of(snap.kind, snap.owner)})
        rollback = {"op": "rollback", "sid": snap.id, "volumes": vids}
        return {"op": "batch", "events": [safety, rollback]}

    def make_clone(self, table: VolumeTable, snap: Snapshot, prefix: str, now: float) -> dict:
        events = []
        next_id = table.next_id
        for m in snap.members:
            name = prefix if snap.kind == "volume" else f"{prefix}-{m.name}"
            check_name(name)
            if table.find(name) or self.find_group(name):
                raise AlreadyExists(f"cannot clone to {name!r}: a volume or group of that name exists")
            events.append({"op": "create", "id": next_id, "name": name, "size": m.size, "group": DEFAULT_GROUP,
                           "created": now, "lineage": [*m.lineage, next_id], "clone_of": [snap.id, m.vid]})
            next_id += 1
        return {"op": "batch", "events": events}

    # -- applying --------------------------------------------------------------------------
    def apply(self, ev: dict) -> None:
        op = ev["op"]
        if op == "group_create":
            self.groups[ev["gid"]] = Group(ev["gid"], ev["name"], ev.get("created", 0.0))
            self.next_gid = max(self.next_gid, ev["gid"] + 1)
        elif op == "group_delete":
            g = self.groups.pop(ev["gid"], None)
            if g is not None:
                self.policies.pop(f"group:{g.id}", None)
        elif op == "policy_set":
            if ev["policy"] is None:
                self.policies.pop(ev["owner"], None)
            else:
                self.policies[ev["owner"]] = Policy(**ev["policy"])
        elif op == "snap_create":
            members = [Member(**m) for m in ev["members"]]
            self.snaps[ev["sid"]] = Snapshot(ev["sid"], ev["name"], ev["kind"], ev["owner"], ev["owner_name"],
                                             ev["created"], ev["seq"], members, ev.get("auto", False))
            self.next_sid = max(self.next_sid, ev["sid"] + 1)
        elif op == "snap_delete":
            self.snaps.pop(ev["sid"], None)
        else:
            raise ValueError(f"unknown catalog event {op!r}")

    # -- checkpoint form -------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"groups": [asdict(g) for g in self.groups.values()],
                "snaps": [asdict(s) for s in self.snaps.values()],
                "policies": {k: asdict(p) for k, p in self.policies.items()},
                "next_gid": self.next_gid, "next_sid": self.next_sid}

    @classmethod
    def from_json(cls, data: dict | None) -> Catalog:
        c = cls()
        if not data:
            return c
        c.groups = {g["id"]: Group(**g) for g in data["groups"]}
        for raw in data["snaps"]:
            s = dict(raw)
            members = [Member(**m) for m in s.pop("members")]
            c.snaps[s["id"]] = Snapshot(**s, members=members)
        c.policies = {k: Policy(**p) for k, p in data["policies"].items()}
        c.next_gid, c.next_sid = data["next_gid"], data["next_sid"]
        return c


def check_policy(policy: Policy) -> None:
    """UsageError naming what a snapshot policy lacks or gets wrong."""
    if policy.every and policy.every < MIN_EVERY or policy.every < 0:
        raise UsageError("--every must be at least 1m")
    if policy.after_written < 0:
        raise UsageError("--after-written must be a positive size, like 1G")
    if not policy.every and not policy.after_written:
        raise UsageError("a policy needs --every (a time schedule) or --after-written (a threshold), or both")
    if policy.keep_last < 0 or policy.keep_daily < 0 or not policy.keep_last + policy.keep_daily:
        raise UsageError("a policy needs --keep-last or --keep-daily above 0")
    if policy.min_interval < MIN_THRESHOLD_INTERVAL:
        raise UsageError("--min-interval must be at least 1s")
    if policy.hook_timeout <= 0:
        raise UsageError("--hook-timeout must be above 0, like 60s")


def auto_name(taken: set[str], now: float) -> str:
    """The name of an automatic snapshot taken at ``now``: auto-YYYYmmdd-HHMMSS[.N]."""
    return _unique("auto-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)), taken)


def _unique(base: str, taken: set[str]) -> str:
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}.{n}"
    return name
