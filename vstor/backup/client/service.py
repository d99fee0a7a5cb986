"""The array's side of backup clients: the registry, the listener, jobs from both initiators,
file-level restore and verify. One per BackupEngine (``engine.clients``).

Guarantees:

* a connection is admitted only after mutual TLS against the pool's CA (the listener) and a
  HELLO whose name is the certificate's common name and a registered client; then the policy
  must be one whose source is ``client:NAME``, every path the client names must be in its
  allowed paths, and its key id must be the registered one. A refusal (a REFUSE frame with a
  code) comes before any data, and policy and key refusals go to the audit log;
* a client push and a run asked of the agent by the schedule make the same job: the engine's
  job row, its parts, and one catalog row per file with its sha256 and stream position;
* a job ends 'done' only after every file's checksum was verified and every part is on the
  media, in one catalog transaction with its file list; any failure ends it 'failed' with one
  line, and the file list then holds only the files whose members lie wholly in parts that
  were closed on the media (none unless the failure was the media's);
* a scheduled run that fails because the client is unreachable or the connection dropped is
  retried ``retries`` times, ``retry_delay`` seconds apart (on the engine's clock); after a
  dropped connection the retry first waits up to RECONNECT_GRACE seconds for the agent, which
  reconnects at once, to come back;
* an agent's connection is closed only after the job using it has ended (a new connection
  from the same agent replaces it for the next job).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vstor.backup.audit import current_actor
from vstor.backup.cartridges import Cartridges
from vstor.backup.client import wire
from vstor.backup.client.admission import (
    PREFIX,
    RETRYABLE,
    JobFailed,
    check_key,
    choose_policy,
    client_of,
    code_of,
    identify,
)
from vstor.backup.client.conn import Conn, array_conn
from vstor.backup.client.restoring import Restorer
from vstor.backup.client.session import Session
from vstor.backup.mediaio import TapeWriter
from vstor.backup.policy import level_for
from vstor.backup.tapefile import PartHeader
from vstor.durable import atomic_write
from vstor.errors import Busy, KeyError_, MediaError, NotFound, NotRunning, UsageError, VstorError

log = logging.getLogger("vstor.backup")

RECONNECT_GRACE = 10.0  # seconds a retry waits for an agent whose connection dropped to come back

@dataclass
class AgentLink:
    conn: Conn
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: threading.Event = field(default_factory=threading.Event)


class ClientService:
    def __init__(self, engine: object) -> None:
        self.engine = engine
        e = engine  # a BackupEngine (typed loosely: no import cycle with engine.py)
        self.catalog, self.audit, self.clock, self.faults = e.catalog, e.audit, e.clock, e.faults  # type: ignore
        self.dir = os.path.join(e.dir, "clients")  # type: ignore[attr-defined]
        self.agents: dict[str, AgentLink] = {}
        self._joined = threading.Condition()  # notified when an agent connects
        self.listener = None
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self.stop = threading.Event()

    def busy(self, policy: str) -> bool:
        """Whether a job of client policy ``policy`` is running."""
        return policy in self._running

    # -- the registry -------------------------------------------------------------------------
    def register(self, name: str, paths: list[str] | None = None, quota: int | None = None,
                 key: bytes | None = None) -> dict:
        from vstor.store.volumes import NAME_RE

        if not NAME_RE.match(name or ""):
            raise UsageError(f"invalid client name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        norm = []
        for p in paths or []:
            if not p.startswith("/"):
                raise UsageError(f"--paths: {p!r} is not an absolute path")
            norm.append(os.path.normpath(p))
        if quota is not None and quota <= 0:
            raise UsageError("--quota must be positive")
        doc = {"name": name, "paths": norm, "quota": quota, "key_id": wire.key_id(key) if key else None}
        with contextlib.suppress(NotFound):
            self.catalog.client(name)
            raise UsageError(f"client {name!r} is already registered; remove it first to change it")
        self.audit.append(current_actor(), "client.register", doc)
        if key is not None:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            atomic_write(os.path.join(self.dir, f"{name}.key"), key, mode=0o600)
        self.catalog.put_client(doc)
        return self.catalog.client(name)

    def remove(self, name: str) -> dict:
        doc = self.catalog.client(name)
        used = [p["name"] for p in self.catalog.policies() if p["source"] == PREFIX + name]
        if used:
            raise Busy(f"client {name!r} is the source of policies {', '.join(used)}: delete them first")
        self.audit.append(current_actor(), "client.remove", {"name": name})
        self.catalog.delete_client(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, f"{name}.key"))
        return doc

    def listing(self) -> list[dict]:
        return [c | {"connected": c["name"] in self.agents} for c in self.catalog.clients()]

    def _key(self, client: dict) -> bytes | None:
        if not client.get("key_id"):
            return None
        with open(os.path.join(self.dir, f"{client['name']}.key"), "rb") as f:
            return f.read()

    # -- the listener ---------------------------------------------------------------------------
    def listen(self, address: str, tls_dir: str, name: str | None) -> str:
        """Serve clients on ``address`` as the array ``name`` of ``tls_dir`` (default: its only
        certificate). Returns the address listened on."""
        from vstor.replication.listener import Listener

        if not name:
            names = [f[:-4] for f in os.listdir(tls_dir) if f.endswith(".pem") and f != "ca.pem"]
            if len(names) != 1:
                raise UsageError(f"{tls_dir} holds {len(names)} certificates: say which is this array's with --name")
            name = names[0]

        self.listener = Listener(address, tls_dir, name, self._handle, faults=self.faults, clock=self.clock,
                                 conn_factory=array_conn)
        self.listener.start()
        return self.listener.address

    def close(self) -> None:
        self.stop.set()
        with self._joined:
            self._joined.notify_all()
        if self.listener is not None:
            self.listener.stop()
        for link in list(self.agents.values()):
            link.closed.set()
            with contextlib.suppress(OSError):
                link.conn.close()

    def _handle(self, conn: Conn, first: tuple[int, bytes]) -> None:
        conn.sock.settimeout(30.0)
        try:
            ftype, body = first
            if ftype != wire.HELLO:
                raise wire.BadFrame(f"{wire.NAMES.get(ftype)} frame where HELLO was due")
            hello = wire.loads(body)
            client = self._identify(conn, hello)
            if hello.get("version") != wire.VERSION:
                raise wire.BadFrame(f"client protocol version {hello.get('version')} is not supported (this array "
                                    f"speaks {wire.VERSION})")
            if hello.get("role") == "agent":
                try:
                    check_key(client, hello)
                except wire.BadFrame as e:
                    self._refuse(conn, e, "key", client["name"])
                    raise
                link = AgentLink(conn)
                conn.send_json(wire.WELCOME, {"agent": True})
                conn.sock.settimeout(None)  # idle: the agent waits for our RUN or RESTORE
                with self._joined:
                    old = self.agents.get(client["name"])
                    self.agents[client["name"]] = link
                    self._joined.notify_all()
                if old is not None:
                    old.closed.set()
                log.info("backup client %s: agent connected from %s", client["name"], conn.peer_name)
                link.closed.wait()
                with link.lock, self._joined:  # a job still on this connection ends before it is closed
                    if self.agents.get(client["name"]) is link:
                        del self.agents[client["name"]]
                return
            self.push(conn, hello, client)
        except (OSError, VstorError) as e:
            log.warning("backup client connection from %s: %s", conn.peer_name, e)

    def _identify(self, conn: Conn, hello: dict) -> dict:
        try:
            return identify(self.catalog, conn.peer_name, hello)
        except KeyError_ as e:
            self._refuse(conn, e, "credentials")
            raise

    def _refuse(self, conn: Conn, e: BaseException, code: str, client: str = "") -> None:
        if code in ("policy", "key", "credentials"):
            self.audit.append(f"client:{client or conn.peer_name}", "client.refused", {"code": code, "reason": str(e)})
        with contextlib.suppress(OSError, VstorError):
            conn.send_json(wire.REFUSE, {"reason": str(e), "code": code})
            if code != RETRYABLE:
                conn.drain()

    def _admit(self, client: dict, hello: dict, policy_name: str | None) -> dict:
        return choose_policy(self.catalog.policies(), client, hello, policy_name)

    def push(self, conn: Conn, hello: dict, client: dict, job: int | None = None, policy_name: str | None = None
             ) -> dict:
        try:
            policy = self._admit(client, hello, policy_name)
        except VstorError as e:
            code = code_of(e)
            self._refuse(conn, e, code, client["name"])
            if job is not None:
                self._fail(job, e)
            raise JobFailed(str(e), code, job) from None
        if job is None:
            try:
                job = self._new_job(policy, hello.get("level"))
            except VstorError as e:
                self._refuse(conn, e, "busy", client["name"])
                raise
        return self._stream(conn, job, policy, client)

    def _new_job(self, policy: dict, asked: str | None) -> int:
        eng = self.engine
        name = policy["name"]
        with self._lock:
            if name in self._running:
                raise Busy(f"a job of policy {name!r} is already running")
            now = self.clock.time()
            last_done = self.catalog.last_done(name)
            level = level_for(policy, asked, self.catalog.last_full(name), last_done, now)
            base = last_done["id"] if level == "incremental" and last_done else None
            key_id = eng.keys.current() if policy["encrypt"] else None  # type: ignore[attr-defined]
            job = self.catalog.new_job(name, level, policy["source"], base, key_id, now + policy["retention"])
            self._running.add(name)
        return job

    def _fail(self, job: int, e: BaseException, parts: list[tuple] = (), safe: list[dict] = ()) -> None:
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

    def _cartridges(self, library: str) -> Cartridges:
        eng = self.engine
        return Cartridges(eng.media, self.catalog, library, eng.store.sb.uuid, self.clock.time)  # type: ignore

    def _stream(self, conn: Conn, job: int, policy: dict, client: dict) -> dict:
        row = self.catalog.job(job)
        base = self.catalog.client_files(row["base_job"]) if row["base_job"] else None
        eng = self.engine
        key = eng.keys.key(row["key_id"]) if row["key_id"] else None  # type: ignore[attr-defined]
        carts = self._cartridges(policy["library"])
        writer = session = None
        try:
            self.catalog.set_job(job, status="running", reason="", started=self.clock.time())
            conn.send_json(wire.WELCOME, {"job": job, "level": row["level"],
                                          "base": [[f["path"], f["type"], f["size"], f["mtime_ns"], f.get("sha256")]
                                                   for f in base]
                                          if base is not None else None})
            conn.key = self._key(client)

            def header(part: int, barcode: str) -> bytes:
                return PartHeader(job, part, policy["name"], row["level"], policy["source"], "", self.clock.time(),
                                  row["base_job"], row["key_id"], [], eng.store.sb.uuid, barcode).encode()  # type: ignore

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
            self._fail(job, e, parts, safe)  # recorded before the client hears of it
            self._refuse(conn, e, code_of(e), client["name"])
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

    def run(self, policy_name: str, level: str | None = None, on_job: Callable[[int], None] | None = None) -> dict:
        """A run asked of the client's agent (the schedule, or 'backup run'), retried as the
        policy says when the client is unreachable. Returns the last attempt's job."""
        policy = self.catalog.policy(policy_name)
        if self.listener is None:
            raise UsageError(f"policy {policy_name!r} backs up a client: its runs go through the array's client "
                             "endpoint; start the array with --backup-listen (and the client's 'vstor client serve')")
        tries = 1 + int(policy.get("retries") or 0)
        job = None
        for attempt in range(tries):
            if attempt and self.clock.wait(self.stop, float(policy.get("retry_delay") or 0)):
                break
            dropped = job is not None and "is unreachable" not in job["reason"]
            job = self._run_once(policy, level, on_job, RECONNECT_GRACE if dropped else 0.0)
            if job["status"] == "done" or not job["reason"].startswith("communication failure"):
                break
            log.warning("backup job %d of %s: %s; attempt %d of %d", job["id"], policy_name, job["reason"],
                        attempt + 1, tries)
        assert job is not None
        return job

    def _agent(self, name: str, grace: float) -> AgentLink | None:
        """The client's connected agent, waiting up to ``grace`` seconds for one to connect."""
        deadline = time.monotonic() + grace
        with self._joined:
            while True:
                link = self.agents.get(name)
                if link is not None and not link.closed.is_set():
                    return link
                left = deadline - time.monotonic()
                if left <= 0 or self.stop.is_set():
                    return None
                self._joined.wait(left)

    def _run_once(self, policy: dict, level: str | None, on_job: Callable[[int], None] | None,
                  grace: float = 0.0) -> dict:
        name = client_of(policy["source"])
        job = self._new_job(policy, level)
        if on_job:
            on_job(job)
        link = self._agent(name or "", grace)
        if link is None:
            self._fail(job, NotRunning(f"client {name!r} is unreachable: its agent is not connected"))
            return self.catalog.job(job)
        with link.lock:
            try:
                client = self.catalog.client(name or "")
                link.conn.sock.settimeout(30.0)
                link.conn.send_json(wire.RUN, {"policy": policy["name"], "level": level, "job": job,
                                               "paths": client["paths"]})
                _, hello = link.conn.recv_json(wire.HELLO)
                self.push(link.conn, hello, client, job, policy["name"])
            except JobFailed as e:
                if e.code == RETRYABLE:
                    link.closed.set()
            except (OSError, VstorError) as e:
                link.closed.set()
                self._fail(job, e)
            finally:
                with contextlib.suppress(OSError):
                    link.conn.sock.settimeout(None)
        return self.catalog.job(job)

    # -- restore and verify (restoring.py) ---------------------------------------------------------
    def _restorer(self) -> Restorer:
        return Restorer(self.catalog, self.engine.keys, self._cartridges, self.agents, self.clock,  # type: ignore
                        self._key)

    def select(self, job: int, pattern: str | None) -> list[dict]:
        return self._restorer().select(job, pattern)

    def restore(self, job: int, to: str | None = None, to_client: str | None = None, target: str | None = None,
                files: str | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
        return self._restorer().restore(job, to, to_client, target, files, progress)

    def verify(self, job: int) -> dict:
        return self._restorer().verify(job)
