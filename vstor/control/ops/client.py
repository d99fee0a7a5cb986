"""Control operations of backup clients (mixed into PoolService): the registry, a client job's
file list, and the client branch of restore and verify.

Every change to the configuration goes through exactly one operation here or in backup.py
(``client.register``, ``client.remove``, ``backup.policy.create``, ``backup.policy.delete``),
so a guard keyed on operation names (MFA, approval) can wrap them.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from vstor.backup.client import wire
from vstor.backup.client.array.admission import client_of
from vstor.store.adminops import Progress
from vstor.units import parse_size

__all__ = ["ClientOps"]


class ClientOps:
    _backup: Any  # BackupOps._backup

    def op_client_register(self, name: str, paths: list[str] | None = None, quota: str | None = None,
                           key_file: str | None = None) -> dict:
        key = wire.load_key(key_file) if key_file else None
        size = parse_size(quota) if quota else None
        return self._backup().clients.register(name, paths or [], size, key)

    def op_client_remove(self, name: str) -> dict:
        return self._backup().clients.remove(name)

    def op_client_list(self) -> list[dict]:
        return self._backup().clients.listing()

    def op_backup_files(self, job: int, glob: str | None = None) -> dict:
        eng = self._backup()
        row = eng.catalog.job(job)
        files = [f for f in eng.catalog.client_files(job) if not glob or fnmatch.fnmatchcase(f["path"], glob)]
        return {"job": job, "status": row["status"], "source": row["source"], "files": files,
                "deleted": eng.catalog.client_deleted(job)}

    def client_restore(self, job: int, to: str | None, to_client: str | None, target: str | None,
                       files: str | None, progress: Progress = None) -> dict | None:
        """A client job's restore, or None for a job of volumes (the engine's)."""
        eng = self._backup()
        if client_of(eng.catalog.job(job)["source"]) is None:
            return None
        return eng.clients.restore(job, to=to, to_client=to_client, target=target, files=files, progress=progress)
