"""Control operations for NBD exports (mixed into PoolService): volume export | unexport | exports.

Exports live in ``meta/nbd_exports.json`` (vstor/nbd/exportfile.py), so they work offline
too and survive a restart; with the daemon running, the NBD server sees a change at the
next client's GO, and ``unexport`` also disconnects the export's clients.
"""

from __future__ import annotations

from typing import Any

from vstor.errors import AlreadyExists, Busy, UsageError
from vstor.nbd.catalog import ExportCatalog
from vstor.nbd.exportfile import ExportSpec, check_name
from vstor.nbd.serving.conn import EXPORT_COUNTERS
from vstor.store.catalog.volumes import NAME_RE
from vstor.store.store import Store


class NbdOps:
    store: Store
    fs: Any
    nbd: Any = None  # the daemon's NbdServer, when started with --nbd
    _nbd_catalog: ExportCatalog | None = None

    def _exports(self) -> ExportCatalog:
        if self.nbd is not None:
            return self.nbd.catalog
        if self._nbd_catalog is None:
            fs = self.fs
            self._nbd_catalog = ExportCatalog(self.store, fs.volumes_in_use if fs is not None else None)
        return self._nbd_catalog

    def _describe_export(self, spec: ExportSpec, stats: dict | None = None) -> dict:
        cat = self._exports()
        d = spec.as_dict()
        try:
            t = cat.resolve(spec)
            d |= {"size": t.size, "effective_read_only": t.read_only, "why_read_only": t.why_read_only,
                  "problem": cat.local_conflict(spec, t)}
        except Exception as e:  # a volume or snapshot deleted since: say so, keep listing
            d |= {"size": 0, "effective_read_only": True, "why_read_only": "", "problem": str(e)}
        s = (stats or {}).get(spec.name, {})
        return d | {"clients": s.get("clients", 0)} | {k: s.get(k, 0) for k in EXPORT_COUNTERS}

    def nbd_clients_of(self, vid: int) -> int:
        """NBD clients connected to exports of volume ``vid`` (live data, not snapshots)."""
        if self.nbd is None:
            return 0
        stats = self.nbd.export_stats()
        n = 0
        for spec in self._exports().specs():
            if not spec.snapshot and spec.volume and stats.get(spec.name, {}).get("clients"):
                vol = self.store.state.table.find(spec.volume)
                if vol is not None and vol.id == vid:
                    n += stats[spec.name]["clients"]
        return n

    def op_volume_export(self, name: str, read_only: bool = False, snapshot: str | None = None,
                         allow: list[str] | None = None, shared: bool = False) -> dict:
        check_name(name)
        for cn in allow or ():
            if not NAME_RE.match(cn or ""):
                raise UsageError(f"invalid client name {cn!r} in --allow: a certificate name from 'vstor pki issue'")
        cat = self._exports()
        if cat.get(name) is not None:
            raise AlreadyExists(f"{name!r} is already exported; 'vstor volume unexport {name}' first to change it")
        spec = ExportSpec(name, "" if snapshot else name, snapshot, read_only or bool(snapshot), tuple(allow or ()),
                          shared)
        target = cat.resolve(spec)  # NotFound for a missing volume or snapshot
        why = cat.local_conflict(spec, target)
        if why:
            raise Busy(f"cannot export {name!r} writable: {why}")
        cat.put(spec)
        return self._describe_export(spec) | {"server": self.nbd.describe() if self.nbd is not None else None}

    def op_volume_unexport(self, name: str) -> dict:
        spec = self._exports().remove(name)
        dropped = self.nbd.disconnect(name) if self.nbd is not None else 0
        return spec.as_dict() | {"disconnected": dropped}

    def op_volume_exports(self) -> dict:
        stats = self.nbd.export_stats() if self.nbd is not None else {}
        return {"server": self.nbd.describe() if self.nbd is not None else None,
                "exports": [self._describe_export(s, stats) for s in self._exports().specs()]}
