"""Exports as the NBD server sees them: the persisted specs resolved against the open Store,
with the sharing rules applied when a client asks for one.

Rules (checked at ``volume export`` and again at every client's GO, since things change):

* a snapshot export is read-only; so is every volume of a group that is a replication
  secondary (the store fences it), whatever the export says;
* a writable export of a volume that is open through FUSE on the array host (a loop device
  or a process holding its image) is refused unless the export is ``shared``; the daemon
  knows FUSE opens exactly, but a local user who opens the image *after* a client connected
  is not stopped (the check runs at export and at connect);
* an export with an ``allow`` list serves only TLS clients whose certificate's common name
  is on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from vstor.errors import NotFound, VstorError
from vstor.nbd import exportfile
from vstor.nbd import proto as P
from vstor.nbd.exportfile import ExportSpec
from vstor.nbd.negotiate import ExportInfo, Refused
from vstor.store.catalog import snapshots


@dataclass(frozen=True)
class Target:
    """The data an export serves: volume ``vid``, or its image in snapshot ``sid`` (0: live)."""

    name: str
    vid: int
    sid: int
    size: int
    read_only: bool
    why_read_only: str


class ExportCatalog:
    def __init__(self, store: object, in_use: Callable[[], dict[int, int]] | None = None) -> None:
        self.store = store
        self.meta = store.files.sub("meta")  # type: ignore[attr-defined]  # the pool's state files
        self.in_use = in_use or dict  # volume id -> open FUSE handles
        self._lock = threading.Lock()
        self._specs = {s.name: s for s in exportfile.load(self.meta)}

    # -- the table ---------------------------------------------------------------------------------
    def specs(self) -> list[ExportSpec]:
        with self._lock:
            return sorted(self._specs.values(), key=lambda s: s.name)

    def get(self, name: str) -> ExportSpec | None:
        with self._lock:
            return self._specs.get(name)

    def put(self, spec: ExportSpec) -> None:
        with self._lock:
            specs = {**self._specs, spec.name: spec}
            exportfile.save(self.meta, list(specs.values()))
            self._specs = specs

    def remove(self, name: str) -> ExportSpec:
        with self._lock:
            if name not in self._specs:
                raise NotFound(f"no export named {name!r}; see 'vstor volume exports'")
            specs = dict(self._specs)
            spec = specs.pop(name)
            exportfile.save(self.meta, list(specs.values()))
            self._specs = specs
            return spec

    # -- resolution ------------------------------------------------------------------------------
    def resolve(self, spec: ExportSpec) -> Target:
        """The export's data and whether it is read-only (and why); NotFound if its volume or
        snapshot is gone."""
        store = self.store
        if spec.snapshot:
            parts = spec.snapshot.split("/")
            if len(parts) != 3:
                raise NotFound(f"bad snapshot image {spec.snapshot!r}: use GROUP-OR-VOLUME/SNAPSHOT/VOLUME")
            sid, vid, size, _created = snapshots.image(store, *parts)  # type: ignore[arg-type]
            return Target(spec.name, vid, sid, size, True, "snapshots export read-only")
        vol = store.volume(spec.volume)  # type: ignore[attr-defined]
        fenced = store.fenced.get(vol.group)  # type: ignore[attr-defined]
        if fenced:
            return Target(spec.name, vol.id, 0, vol.size, True, f"a replication secondary exports read-only ({fenced})")
        return Target(spec.name, vol.id, 0, vol.size, spec.read_only, "exported --read-only" if spec.read_only else "")

    def local_conflict(self, spec: ExportSpec, target: Target) -> str:
        """Why a writable export of a locally open volume is refused ("" if it is not)."""
        if target.read_only or spec.shared or target.sid:
            return ""
        n = self.in_use().get(target.vid, 0)
        if not n:
            return ""
        return (f"volume {spec.volume!r} is open on the array host ({n} handle(s): a loop device or a process); "
                f"detach it, export it --read-only, or export it --shared if the users coordinate")

    # -- negotiation's Catalog -----------------------------------------------------------------------
    def lookup(self, name: str, peer: str | None, tls: bool) -> ExportInfo:
        spec = self.get(name)
        if spec is None:
            raise Refused(P.REP_ERR_UNKNOWN, f"no export named {name!r} on this array (list them with "
                                             "'nbdinfo --list' or 'vstor volume exports')")
        if spec.allow and (peer is None or peer not in spec.allow):
            who = f"client certificate {peer!r}" if peer else "a client without a certificate (use TLS)"
            raise Refused(P.REP_ERR_POLICY, f"export {name!r} is not allowed for {who}")
        try:
            target = self.resolve(spec)
        except VstorError as e:
            raise Refused(P.REP_ERR_UNKNOWN, f"export {name!r} cannot be served: {e}") from None
        why = self.local_conflict(spec, target)
        if why:
            raise Refused(P.REP_ERR_POLICY, f"export {name!r} refused: {why}")
        desc = f"vstor {'snapshot ' + spec.snapshot if spec.snapshot else 'volume ' + spec.volume}"
        return ExportInfo(name, target.size, target.read_only, desc, key=target)

    def listing(self, peer: str | None, tls: bool) -> list[tuple[str, str]]:
        out = []
        for s in self.specs():
            if s.allow and (peer is None or peer not in s.allow):
                continue
            out.append((s.name, f"vstor {'snapshot ' + s.snapshot if s.snapshot else 'volume ' + s.volume}"))
        return out
