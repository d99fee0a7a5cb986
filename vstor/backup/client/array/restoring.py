"""Restore and verify of client jobs: files back under a directory on the array host, or
streamed to the client's agent; parts read back and compared with the catalog.

A restore takes the job's file list from the catalog (``--files``: a shell pattern on the
path; a hard link whose first name is not chosen brings its inode's data under its own
name), orders the files by the job whose media hold them and their offset there, and reads
only the records that hold them (readback.py). Every file's sha256 is checked where it is
written (extract.py, on the array or in the agent). The restore is recorded in the catalog
with its outcome, like the engine's.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable

from vstor.backup.catalog import BackupCatalog
from vstor.backup.client import wire
from vstor.backup.client.array.readback import RangeReader, TapeAccess
from vstor.backup.client.extract import Extractor
from vstor.backup.media.cartridges import Cartridges
from vstor.backup.media.mediaio import part_sha256
from vstor.clock import Clock
from vstor.errors import NotFound, NotRunning, UsageError, VstorError

__all__ = ["Restorer"]


class Restorer:
    def __init__(self, catalog: BackupCatalog, keys: object, cartridges: Callable[[str], Cartridges],
                 agents: dict, clock: Clock, client_key: Callable[[dict], bytes | None]) -> None:
        self.catalog, self.keys, self._cartridges = catalog, keys, cartridges
        self.agents, self.clock, self._key = agents, clock, client_key

    def select(self, job: int, pattern: str | None) -> list[dict]:
        """The job's entries matching ``pattern`` (all without one). Only the rows under the
        pattern's literal start are read from the catalog, so one file of many is quick."""
        if not pattern:
            return self.catalog.client_files(job)
        cut = min((i for i, ch in enumerate(pattern) if ch in "*?["), default=len(pattern))
        out = []
        for r in self.catalog.client_files(job, pattern[:cut]):
            if fnmatch.fnmatchcase(r["path"], pattern):
                if r["type"] == "hardlink" and not fnmatch.fnmatchcase(r["link"], pattern):
                    first = self.catalog.client_files(job, r["link"])  # its inode's data, under this name
                    r = next((f | {"path": r["path"]} for f in first if f["path"] == r["link"]), r)
                out.append(r)
        return out

    def restore(self, job: int, to: str | None, to_client: str | None, target: str | None, files: str | None,
                progress: Callable[[int, int], None] | None = None) -> dict:
        row = self.catalog.job(job)
        if not row["source"].startswith("client:"):
            raise UsageError(f"backup job {job} is of volumes, not of a client: restore it with --to NAME")
        if row["status"] not in ("done", "failed"):
            raise UsageError(f"backup job {job} is {row['status']}: nothing of it can be restored")
        entries = self.select(job, files)
        if not entries:
            raise NotFound(f"backup job {job} holds no files{' matching ' + repr(files) if files else ''}")
        entries.sort(key=lambda f: (f["type"] == "hardlink", f["src_job"], f["data_offset"]))
        readers: dict[int, RangeReader] = {}
        access = TapeAccess(self._cartridges)

        def data(f: dict):  # noqa: ANN202
            src = f["src_job"]
            if src not in readers:
                j = self.catalog.job(src)
                key = self.keys.key(j["key_id"]) if j["key_id"] else None  # type: ignore[attr-defined]
                readers[src] = RangeReader(j, access, key)
            return readers[src].read(f["data_offset"], sum(n for _o, n in f["extents"]))

        started, t0 = self.clock.time(), self.clock.monotonic()
        where = to or f"{to_client}:{target}"
        total = sum(f["size"] for f in entries)
        try:
            if to is not None:
                ext = Extractor(to)
                for f in entries:
                    ext.entry(f, data(f) if f["type"] == "file" else ())
                    if progress:
                        progress(ext.bytes, total)
                out = ext.finish()
            else:
                out = self._restore_to_client(to_client or "", target or "", entries, data)
        except (OSError, VstorError) as e:
            self.catalog.add_restore(job, where, started, self.clock.time(), 0, "failed", str(e))
            raise
        finally:
            read = sum(r.read_bytes for r in readers.values())
            access.release()
        rid = self.catalog.add_restore(job, where, started, self.clock.time(), out.get("bytes", 0), "done")
        return out | {"restore": rid, "job": job, "read_bytes": read,
                      "seconds": round(max(self.clock.monotonic() - t0, 0.0), 3)}

    def _restore_to_client(self, name: str, target: str, entries: list[dict], data: Callable) -> dict:
        client = self.catalog.client(name)
        link = self.agents.get(name)
        if link is None or link.closed.is_set():
            raise NotRunning(f"client {name!r} is unreachable: its agent is not connected ('vstor client serve')")
        with link.lock:
            conn = link.conn
            conn.sock.settimeout(30.0)
            try:
                conn.send_json(wire.RESTORE, {"target": target})
                conn.key = self._key(client)
                for f in entries:
                    conn.send(wire.FILE, wire.dumps(f))
                    if f["type"] == "file":
                        for piece in data(f):
                            for i in range(0, len(piece), wire.DATA_CHUNK):
                                conn.send(wire.DATA, piece[i : i + wire.DATA_CHUNK])
                        conn.send_json(wire.FEND, {"sha256": f["sha256"]})
                conn.key = None
                conn.send_json(wire.END, {"files": len(entries)})
                _, result = conn.recv_json(wire.RESULT)
            except (OSError, wire.BadFrame):
                link.closed.set()
                raise
            finally:
                conn.key = None
                with contextlib.suppress(OSError):
                    conn.sock.settimeout(None)
        if result.get("status") != "done":
            raise VstorError(f"the restore on client {name!r} failed: {result.get('reason')}")
        return result

    def verify(self, job: int) -> dict:
        """Read every part back and compare its hash with the catalog's; recorded on the job."""
        row = self.catalog.job(job)
        problems = []
        for part in row["parts"]:
            carts = self._cartridges(part["library"])
            try:
                if part_sha256(carts.load_for_read(part["barcode"]), part["file"]) != part["sha256"]:
                    problems.append(f"part {part['part']} on {part['barcode']} does not read back as written")
            except VstorError as e:
                problems.append(str(e))
            finally:
                carts.release()
        result = "failed" if problems else "ok"
        self.catalog.set_job(job, verify=result, verify_time=self.clock.time(), verify_reason="; ".join(problems))
        return {"job": job, "verify": result, "problems": problems}
