"""Control operations for consistency groups and snapshots (mixed into PoolService).

The checks that need the FUSE export live here: a snapshot whose image is open (attached
through a loop device) cannot be deleted, and rollback refuses while a member volume is
open unless forced.
"""

from __future__ import annotations

from typing import Any

from vstor.errors import Busy, NotFound
from vstor.store.catalog import snapshots
from vstor.store.catalog.groups import Group
from vstor.store.store import Store


class CatalogOps:
    store: Store
    fs: Any
    mount: str | None
    reclaimer: Any

    # -- groups ----------------------------------------------------------------------------
    def _group(self, g: Group) -> dict:
        st = self.store.state
        with self.store.locked():
            members = sorted(v.name for v in st.table.by_id.values() if v.group == g.id)
            policy = st.catalog.policies.get(f"group:{g.id}")
            nsnaps = len(st.catalog.snapshots_of("group", g.id))
            seq = st.group_seq.get(g.id, 0)
        return {"id": g.id, "name": g.name, "created": g.created, "volumes": members, "seq": seq,
                "snapshots": nsnaps, "policy": policy.__dict__ if policy else None}

    def _find_group(self, name: str) -> Group:
        with self.store.locked():
            return self.store.state.catalog.group(name)

    def op_group_create(self, name: str, volumes: list[str]) -> dict:
        self.store.event(lambda st: st.catalog.make_group_create(st.table, name, volumes, self.store.clock.time()))
        return self._group(self._find_group(name))

    def op_group_add(self, group: str, volume: str) -> dict:
        self._guard_group(self._find_group(group).id, "add volumes")  # type: ignore[attr-defined]
        self.store.event(lambda st: st.catalog.make_group_add(st.table, group, volume))
        return self._group(self._find_group(group))

    def op_group_remove(self, group: str, volume: str) -> dict:
        self._guard_group(self._find_group(group).id, "remove volumes")  # type: ignore[attr-defined]
        self.store.event(lambda st: st.catalog.make_group_remove(st.table, group, volume))
        return self._group(self._find_group(group))

    def op_group_delete(self, group: str) -> dict:
        self._guard_group(self._find_group(group).id, "delete the group")  # type: ignore[attr-defined]
        desc = self._group(self._find_group(group))
        self.store.event(lambda st: st.catalog.make_group_delete(st.table, group))
        return desc | {"deleted": True}

    def op_group_list(self) -> list[dict]:
        with self.store.locked():
            groups = sorted(self.store.state.catalog.groups.values(), key=lambda g: g.name)
        return [self._group(g) for g in groups]

    def op_group_show(self, group: str) -> dict:
        desc = self._group(self._find_group(group))
        _, per_volume = snapshots.sizes(self.store, {self.store.volume(v).id for v in desc["volumes"]})
        desc["space"] = {k: sum(v[k] for v in per_volume.values()) for k in ("allocated", "snapshots", "total")}
        return desc

    # -- snapshots -------------------------------------------------------------------------
    def op_snapshot_create(self, owner: str, name: str | None = None) -> dict:
        return snapshots.create(self.store, owner, name)

    def op_snapshot_list(self, owner: str | None = None) -> list[dict]:
        return snapshots.listing(self.store, owner)

    def op_snapshot_delete(self, owner: str, name: str) -> dict:
        snap = snapshots.get(self.store, owner, name)
        if self.fs and self.fs.snapshots_in_use().get(snap.id):
            raise Busy(f"snapshot {owner}/{name} is in use (attached or open); detach it first with "
                       f"'vstor volume detach --snapshot {owner}/{name}/VOLUME'")
        return snapshots.delete(self.store, owner, name)

    def op_snapshot_rollback(self, owner: str, name: str, force: bool = False) -> dict:
        snap = snapshots.get(self.store, owner, name)
        if snap.kind == "group":
            self._guard_group(snap.owner, "roll it back")  # type: ignore[attr-defined]
        busy = [m.name for m in snap.members if self.fs and self.fs.volumes_in_use().get(m.vid)]
        if busy and not force:
            raise Busy(f"volumes still open (attached?): {', '.join(busy)}; detach them, or repeat with --force "
                       "(the host then holds stale cached data)")
        return snapshots.rollback(self.store, owner, name)

    def op_snapshot_clone(self, owner: str, name: str, prefix: str) -> dict:
        return {"clones": snapshots.clone(self.store, owner, name, prefix)}

    def op_snapshot_diff(self, owner: str, frm: str, to: str) -> list[dict]:
        return snapshots.diff(self.store, owner, frm, to)

    def op_snapshot_image(self, spec: str) -> dict:
        parts = spec.split("/")
        if len(parts) != 3:
            raise NotFound(f"invalid snapshot image {spec!r}: use GROUP-OR-VOLUME/SNAPSHOT/VOLUME")
        snapshots.image(self.store, *parts)
        image = f"{self.mount}/snapshots/{spec}" if self.mount else None
        return {"spec": spec, "image": image}

    def op_snapshot_policy_set(self, owner: str, every: float | None, keep_last: int = 0,
                               keep_daily: int = 0, after_written: int = 0, min_interval: float = 60.0,
                               pre: str = "", post: str = "", hook_timeout: float = 60.0) -> dict:
        return snapshots.set_policy(self.store, owner, every, keep_last, keep_daily, after_written=after_written,
                                    min_interval=min_interval, pre=pre or "", post=post or "",
                                    hook_timeout=hook_timeout)

    def op_snapshot_policy_list(self) -> list[dict]:
        with self.store.locked():
            cat, table = self.store.state.catalog, self.store.state.table
            out = []
            for key, p in sorted(cat.policies.items()):
                kind, oid = key.split(":")
                owner = cat.groups[int(oid)].name if kind == "group" else table.by_id[int(oid)].name
                out.append({"owner": owner, "kind": kind} | p.__dict__)
        runner = getattr(self.reclaimer, "policies", None)  # the outcome of each one's last automatic snapshot
        for d in out:
            d["last_run"] = runner.last.get(d["owner"]) if runner is not None else None
        return out
