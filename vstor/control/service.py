"""Pool operations behind the control socket, in one place.

The daemon serves them over its socket with a live FUSE export; admin commands run the
same methods offline (under the pool lock) when no daemon is running. Results are plain
JSON-able dicts.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable
from typing import Any

from vstor.backup.audit import current_actor
from vstor.control.ops.backup import BackupOps
from vstor.control.ops.catalog import CatalogOps
from vstor.control.ops.client import ClientOps
from vstor.control.ops.drill import DrillOps
from vstor.control.ops.governance import GovernanceOps
from vstor.control.ops.media import MediaOps
from vstor.control.ops.nbd import NbdOps
from vstor.control.ops.pair import PairOps
from vstor.control.ops.status import StatusOps
from vstor.errors import Busy, UsageError, VstorError
from vstor.store.adminops import Progress
from vstor.store.catalog.volumes import Volume
from vstor.store.store import Store

# Configuration changes the audit log records here (the backup engine records its own: policies,
# keys, expiry). Data-path and read-only operations are not audited.
AUDITED = frozenset({
    "pair.create", "pair.split", "pair.resync", "pair.takeover", "pair.failback", "pair.delete",
    "library.create", "library.delete", "media.create", "media.protect", "media.export", "media.import",
    "snapshot.policy_set",  # its --pre/--post commands run as root in the daemon
})
_AUDITED_HANDLERS = frozenset(op.replace(".", "_") for op in AUDITED)  # "snapshot.policy_set" is the same op


class PoolService(CatalogOps, PairOps, MediaOps, BackupOps, ClientOps, DrillOps, StatusOps, GovernanceOps, NbdOps):
    def __init__(self, store: Store, mount: str | None = None, fs: Any = None, reclaimer: Any = None, *,
                 media: Any = None, backup: Any = None, replication: Any = None, nbd: Any = None,
                 stop_requested: Callable[[], None] | None = None) -> None:
        """The daemon passes its parts; an offline command passes only the store (``media`` and
        ``backup`` are then opened on first use, and closed by :meth:`close`)."""
        self.store = store
        self.mount = mount
        self.fs = fs
        self.reclaimer = reclaimer
        self.replication = replication
        self.media = media  # the daemon's MediaManager; offline commands open their own
        self.backup = backup  # the daemon's BackupEngine; offline commands open their own
        self.nbd = nbd  # the daemon's NbdServer (array start --nbd)
        self.started = time.time()
        self.stop_requested = stop_requested  # the daemon's: a callable that unmounts

    def close(self) -> None:
        """Close what an offline command opened (the daemon closes its own engine and media)."""
        if self.backup is not None:
            self.backup.close()
        if self.media is not None:
            self.media.close()

    def dispatch(self, op: str, args: dict, progress: Progress = None) -> Any:
        """Run ``op``. ``progress(done, total)``, if given, is passed on to the operations that
        report their progress (those with a ``progress`` parameter)."""
        if getattr(self, "op_" + op.replace(".", "_"), None) is None:
            raise UsageError(f"unknown control operation {op!r}")
        if "progress" in args:
            raise UsageError("bad arguments: 'progress' is not an argument")
        return self._governed(op, dict(args), progress)  # ops/governance.py: --as/--otp, approval, audit

    def _execute(self, op: str, args: dict, progress: Progress = None) -> Any:
        """Run ``op`` once governance let it through."""
        handler = getattr(self, "op_" + op.replace(".", "_"))
        if op.replace(".", "_") in _AUDITED_HANDLERS:  # written before the change: it may name a change that failed
            self._backup().audit.append(current_actor(), op, args)
        if progress is not None and "progress" in inspect.signature(handler).parameters:
            return handler(**args, progress=progress)
        return handler(**args)

    # -- volumes -------------------------------------------------------------------------
    def _describe(self, vol: Volume) -> dict:
        group = self.store.state.catalog.groups.get(vol.group)
        d = {"id": vol.id, "name": vol.name, "size": vol.size, "group": vol.group,
             "group_name": group.name if group else None, "created": vol.created,
             "allocated": self.store.volume_usage(vol.id)}
        if self.mount:
            d["image"] = os.path.join(self.mount, "volumes", vol.name)
            d["open_handles"] = self.fs.volumes_in_use().get(vol.id, 0) if self.fs else 0
        return d

    def op_volume_create(self, name: str, size: int) -> dict:
        return self._describe(self.store.create_volume(name, size))

    def op_volume_list(self) -> list[dict]:
        return [self._describe(v) for v in self.store.volumes()]

    def op_volume_show(self, name: str) -> dict:
        return self._describe(self.store.volume(name))

    def op_volume_resize(self, name: str, size: int, allow_shrink: bool = False, progress: Progress = None) -> dict:
        self._guard_volume(name, "resize its volumes")
        vol = self.store.volume(name)
        if size < vol.size and self._open_handles(vol):
            raise Busy(f"volume {name!r} is open (attached, or an NBD client is connected); detach it before shrinking")
        return self._describe(self.store.resize_volume(name, size, allow_shrink, progress))

    def op_volume_delete(self, name: str, progress: Progress = None) -> dict:
        self._guard_volume(name, "delete its volumes")
        vol = self.store.volume(name)
        if self._open_handles(vol):
            raise Busy(f"volume {name!r} is in use (attached to a loop device, open, or an NBD client is connected); "
                       f"detach it first with 'vstor volume detach {name}'")
        desc = self._describe(vol)  # before the delete, which drops the volume's map
        self.store.delete_volume(name, progress)
        return desc | {"deleted": True}

    def _open_handles(self, vol: Volume) -> int:
        """Local opens through FUSE, plus NBD clients of the volume's exports."""
        return (self.fs.volumes_in_use().get(vol.id, 0) if self.fs else 0) + self.nbd_clients_of(vol.id)

    # -- array ---------------------------------------------------------------------------
    def op_status(self) -> dict:
        st = self.store
        return {
            "pid": os.getpid(), "pool": os.path.abspath(st.pool), "mount": self.mount,
            "running": self.mount is not None, "started": self.started,
            "settings": {"chunk_size": st.sb.chunk_size, "segment_size": st.sb.segment_size,
                         "compress": st.sb.compress, "encrypt": st.sb.encrypt, "uuid": st.sb.uuid},
            "volumes": self.op_volume_list(),
            "groups": len(st.state.catalog.groups), "snapshots": len(st.state.catalog.snaps),
            "journal": st.usage() | {"failed": st.journal.failed, "syncs": st.journal.syncs,
                                     "outage": st.journal.outage.describe() if st.journal.outage else None,
                                     "read_failures": st.journal.read_failures, "last_resume": st.last_resume,
                                     "appended_bytes": st.journal.appended_bytes,
                                     "consumers": {k: list(v) for k, v in st.consumers.positions().items()}},
            "recovery": st.recovery,
            "fuse": getattr(self.fs, "conn", {}),
            "maintenance_error": getattr(self.reclaimer, "last_error", ""),
            "fragment_extents": getattr(self.reclaimer, "fragment_extents", 0),
            "gc": {"state": self.reclaimer.gc_state} if self.reclaimer is not None else None,
            "defrag": self.reclaimer.defrag.describe() if self.reclaimer is not None else None,
            "replication": self.replication.endpoint() if self.replication else None,
            "nbd": self.nbd.describe() if self.nbd is not None else None,
        }

    def op_stats(self) -> dict:
        return self.store.stats.as_dict()

    def op_sync(self) -> dict:
        self.store.sync()
        return {"durable": list(self.store.journal.durable_position())}

    def op_stop(self) -> dict:
        if self.stop_requested is None:
            raise UsageError("the array is not running")
        busy = {v: n for v, n in (self.fs.volumes_in_use() if self.fs else {}).items() if n}
        if busy:
            names = ", ".join(sorted(v.name for v in self.store.volumes() if v.id in busy))
            raise Busy(f"volumes still open (attached?): {names}; detach them first with 'vstor volume detach'")
        try:
            self.store.sync()
        except VstorError:
            if not self.store.journal.failed and self.store.journal.outage is None:
                raise
        # a failed journal refuses to sync: the array stops anyway (no final checkpoint), and says so
        self.stop_requested()
        return {"pid": os.getpid(), "stopping": True, "failed": self.store.journal.failed}
