"""The array's receive path of a client job: admission to a policy, the job's row, the stream
to tape and the catalog's record of it, or the failure. One per ClientService.

Guarantees:

* after the listener admitted a client (service.py), the policy must be one whose source is
  ``client:NAME``, every path the client names must be in its allowed paths, and its key id
  must be the registered one. A refusal (a REFUSE frame with a code) comes before any data,
  and policy and key refusals go to the audit log;
* a client push and a run asked of the agent by the schedule make the same job: the engine's
  job row, its parts, and one catalog row per file with its sha256 and stream position;
* a job ends 'done' only after every file's checksum was verified and every part is on the
  media, in one catalog transaction with its file list; any failure ends it 'failed' with one
  line, and the file list then holds only the files whose members lie wholly in parts that
  were closed on the media (none unless the failure was the media's).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable, Sequence

from vstor.backup.audit import AuditLog
from vstor.backup.catalog import BackupCatalog
from vstor.backup.client import wire
from vstor.backup.client.array.admission import RETRYABLE, JobFailed, choose_policy, code_of
from vstor.backup.client.array.session import Session
from vstor.backup.client.conn import Conn
from vstor.backup.media.cartridges import Cartridges
from vstor.backup.media.mediaio import TapeWriter
from vstor.backup.media.tapefile import PartHeader
from vstor.backup.rules.policy import level_for
from vstor.clock import Clock
from vstor.errors import Busy, MediaError, VstorError
from vstor.faults import Faults

__all__ = ["Receiver"]

log = logging.getLogger("vstor.backup")


class Receiver:
    """Client jobs from their admission to their end. ``keys``: the engine's BackupKeys;
    ``cartridges(library)``: a Cartridges for that library; ``client_key(client)``: the key
    registered for a client (None without one); ``verify(job)``: the read-back after a job."""

    def __init__(self, catalog: BackupCatalog, audit: AuditLog, clock: Clock, faults: Faults, keys: object,
                 cartridges: Callable[[str], Cartridges], pool_uuid: str,
                 client_key: Callable[[dict], bytes | None], verify: Callable[[int], dict]) -> None:
        self.catalog, self.audit, self.clock, self.faults, self.keys = catalog, audit, clock, faults, keys
        self.cartridges, self.pool_uuid, self.client_key, self.verify = cartridges, pool_uuid, client_key, verify
        self._lock = threading.Lock()
        self._running: set[str] = set()

    def busy(self, policy: str) -> bool:
        """Whether a job of client policy ``policy`` is running."""
        return policy in self._running

    def refuse(self, conn: Conn, e: BaseException, code: str, client: str = "") -> None:
        """Tell the client why it is refused (policy, key and credential refusals are audited)."""
        if code in ("policy", "key", "credentials"):
            self.audit.append(f"client:{client or conn.peer_name}", "client.refused", {"code": code, "reason": str(e)})
        with contextlib.suppress(OSError, VstorError):
            conn.send_json(wire.REFUSE, {"reason": str(e), "code": code})
            if code != RETRYABLE:
                conn.drain()

    def push(self, conn: Conn, hello: dict, client: dict, job: int | None = None, policy_name: str | None = None
             ) -> dict:
        """Admit ``client``'s stream to a policy and receive it as job ``job`` (a new one if None)."""
        try:
            policy = choose_policy(self.catalog.policies(), client, hello, policy_name)
        except VstorError as e:
            code = code_of(e)
            self.refuse(conn, e, code, client["name"])
            if job is not None:
                self.fail(job, e)
            raise JobFailed(str(e), code, job) from None
        if job is None:
            try:
                job = self.new_job(policy, hello.get("level"))
            except VstorError as e:
                self.refuse(conn, e, "busy", client["name"])
                raise
        return self._stream(conn, job, policy, client)

    def new_job(self, policy: dict, asked: str | None) -> int:
        name = policy["name"]
        with self._lock:
            if name in self._running:
                raise Busy(f"a job of policy {name!r} is already running")
            now = self.clock.time()
            last_done = self.catalog.last_done(name)
            level = level_for(policy, asked, self.catalog.last_full(name), last_done, now)
            base = last_done["id"] if level == "incremental" and last_done else None
            key_id = self.keys.current() if policy["encrypt"] else None  # type: ignore[attr-defined]
            job = self.catalog.new_job(name, level, policy["source"], base, key_id, now + policy["retention"])
            self._running.add(name)
        return job

    def fail(self, job: int, e: BaseException, parts: Sequence[tuple] = (), safe: Sequence[dict] = ()) -> None:
        why = e.message if isinstance(e, VstorError) else f"{type(e).__name__}: {e}"
        code = code_of(e)
        if code == RETRYABLE:
            why = f"communication failure: {why}"
        if safe or parts:
            why += f" ({len(safe)} files are safe on the media: see 'vstor backup files JOB')"
        row = self.catalog.job(job)
        if row["status"] in ("waiting", "running"):
            self.catalog.end_client_job(job, list(parts), list(safe), [], status="failed", reason=why,
                                        ended=self.clock.time())
        self._running.discard(row["policy"])
        log.error("backup job %d (%s) failed: %s", job, row["policy"], why)

    def _stream(self, conn: Conn, job: int, policy: dict, client: dict) -> dict:
        row = self.catalog.job(job)
        base = self.catalog.client_files(row["base_job"]) if row["base_job"] else None
        key = self.keys.key(row["key_id"]) if row["key_id"] else None  # type: ignore[attr-defined]
        carts = self.cartridges(policy["library"])
        writer = session = None
        try:
            self.catalog.set_job(job, status="running", reason="", started=self.clock.time())
            conn.send_json(wire.WELCOME, {"job": job, "level": row["level"],
                                          "base": [[f["path"], f["type"], f["size"], f["mtime_ns"], f.get("sha256")]
                                                   for f in base]
                                          if base is not None else None})
            conn.key = self.client_key(client)

            def header(part: int, barcode: str) -> bytes:
                return PartHeader(job, part, policy["name"], row["level"], policy["source"], "", self.clock.time(),
                                  row["base_job"], row["key_id"], [], self.pool_uuid, barcode).encode()

            drv = carts.load_for_write(policy["media"])
            writer = TapeWriter(drv, lambda: carts.next_for_write(policy["media"]), header, key=key, job=job)

            def sink(data: bytes) -> None:
                try:
                    self.faults.hit("client.write")  # eio/enospc: a medium error at the destination
                    writer.write(data)
                except OSError as e:
                    raise MediaError(f"medium error writing to tape: {e.strerror or e}", e.errno or 5) from None

            session = Session(job, conn.recv, sink, client["paths"], client.get("quota"), base)
            files = session.run()
            try:
                places = writer.close()
            except OSError as e:
                raise MediaError(f"medium error writing to tape: {e.strerror or e}", e.errno or 5) from None
        except BaseException as e:
            parts, safe = [], []
            if writer is not None and isinstance(e, MediaError) and session is not None:
                parts = [(p.part, p.barcode, carts.library, p.file, p.first_block, p.last_block, p.bytes, p.sha256)
                         for p in writer.places]
                on_media = sum(p.bytes for p in writer.places)
                safe = [f for f, end in session.done if end <= on_media]
            carts.release()
            self.fail(job, e, parts, safe)  # recorded before the client hears of it
            self.refuse(conn, e, code_of(e), client["name"])
            if not isinstance(e, Exception):
                raise
            raise JobFailed(self.catalog.job(job)["reason"], code_of(e), job) from None
        finally:
            conn.key = None
        carts.release()
        stored = 0
        for p in places:
            m = self.catalog.media(p.barcode) or {}
            self.catalog.set_media(p.barcode, bytes=(m.get("bytes") or 0) + p.bytes, last_written=self.clock.time())
            stored += p.bytes
        parts = [(p.part, p.barcode, carts.library, p.file, p.first_block, p.last_block, p.bytes, p.sha256)
                 for p in places]
        sha = hashlib.sha256("".join(p.sha256 for p in places).encode()).hexdigest()
        self.catalog.end_client_job(job, parts, files, session.deleted, status="done", ended=self.clock.time(),
                                    bytes=session.data_bytes, stored=stored, sha256=sha)
        self._running.discard(policy["name"])
        result = {"job": job, "status": "done", "level": row["level"], "files": len(files), "sent": session.sent,
                  "deleted": len(session.deleted), "bytes": session.data_bytes}
        if policy.get("verify", True):  # read back, as the engine does after each job
            result["verify"] = self.verify(job)["verify"]
        with contextlib.suppress(OSError, VstorError):
            conn.send_json(wire.RESULT, result)
        log.info("backup job %d (%s, client %s) done: %d files sent", job, policy["name"], client["name"],
                 session.sent)
        return self.catalog.job(job)
