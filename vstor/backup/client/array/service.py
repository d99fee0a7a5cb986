"""The array's side of backup clients: the registry, the listener, and the one object the engine
and the control operations use for client jobs, which are received in receive.py, asked of
agents in runs.py and restored in restoring.py. One per BackupEngine (``engine.clients``).

Guarantees:

* a connection is admitted only after mutual TLS against the pool's CA (the listener) and a
  HELLO whose name is the certificate's common name and a registered client, speaking this
  array's protocol version; an agent's HELLO must also declare the registered key id. A
  refusal (a REFUSE frame with a code) comes before any data, and credential and key refusals
  go to the audit log. What a pushed stream may then do is receive.py's to check;
* registering and removing a client go to the audit log before they take effect; a client
  that is the source of a policy cannot be removed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from vstor.backup.audit import current_actor
from vstor.backup.client import wire
from vstor.backup.client.array.admission import PREFIX, check_key, identify
from vstor.backup.client.array.receive import Receiver
from vstor.backup.client.array.restoring import Restorer
from vstor.backup.client.array.runs import Agents
from vstor.backup.client.conn import Conn, array_conn
from vstor.backup.media.cartridges import Cartridges
from vstor.errors import Busy, KeyError_, NotFound, UsageError, VstorError

if TYPE_CHECKING:
    from vstor.replication.listener import Listener

__all__ = ["ClientService"]

log = logging.getLogger("vstor.backup")


class ClientService:
    def __init__(self, engine: object) -> None:
        self.engine = engine
        e = engine  # a BackupEngine (typed loosely: no import cycle with engine.py)
        self.catalog, self.audit, self.clock, self.faults = e.catalog, e.audit, e.clock, e.faults  # type: ignore
        self.files = e.files.sub("clients")  # type: ignore[attr-defined]  # NAME.key (PoolFiles)
        self.receiver = Receiver(self.catalog, self.audit, self.clock, self.faults, e.keys,  # type: ignore
                                 self._cartridges, e.store.sb.uuid, self._key, self.verify)  # type: ignore
        self.runs = Agents(self.catalog, self.clock, self.receiver)
        self.agents = self.runs.links  # client name -> AgentLink of its connected agent
        self.listener: Listener | None = None

    def busy(self, policy: str) -> bool:
        """Whether a job of client policy ``policy`` is running."""
        return self.receiver.busy(policy)

    # -- the registry -------------------------------------------------------------------------
    def register(self, name: str, paths: list[str] | None = None, quota: int | None = None,
                 key: bytes | None = None) -> dict:
        from vstor.store.catalog.volumes import NAME_RE

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
            self.files.write(f"{name}.key", key)  # mode 0600 on a local pool
        self.catalog.put_client(doc)
        return self.catalog.client(name)

    def remove(self, name: str) -> dict:
        doc = self.catalog.client(name)
        used = [p["name"] for p in self.catalog.policies() if p["source"] == PREFIX + name]
        if used:
            raise Busy(f"client {name!r} is the source of policies {', '.join(used)}: delete them first")
        self.audit.append(current_actor(), "client.remove", {"name": name})
        self.catalog.delete_client(name)
        self.files.remove(f"{name}.key")
        return doc

    def listing(self) -> list[dict]:
        return [c | {"connected": c["name"] in self.agents} for c in self.catalog.clients()]

    def _key(self, client: dict) -> bytes | None:
        if not client.get("key_id"):
            return None
        raw = self.files.read(f"{client['name']}.key")
        if raw is None:
            raise FileNotFoundError(errno.ENOENT, f"{self.files.where(client['name'] + '.key')} is missing")
        return raw

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

        # replication's listener, typed for its Conn; ours has the interface the listener uses
        self.listener = listener = Listener(address, tls_dir, name, self._handle,  # type: ignore[arg-type]
                                            faults=self.faults, clock=self.clock,
                                            conn_factory=array_conn)  # type: ignore[arg-type]
        listener.start()
        return listener.address

    def close(self) -> None:
        self.runs.stopping()
        if self.listener is not None:
            self.listener.stop()
        self.runs.close()

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
                    self.receiver.refuse(conn, e, "key", client["name"])
                    raise
                conn.send_json(wire.WELCOME, {"agent": True})
                self.runs.serve(conn, client["name"])
                return
            self.receiver.push(conn, hello, client)
        except (OSError, VstorError) as e:
            log.warning("backup client connection from %s: %s", conn.peer_name, e)

    def _identify(self, conn: Conn, hello: dict) -> dict:
        try:
            return identify(self.catalog, conn.peer_name, hello)
        except KeyError_ as e:
            self.receiver.refuse(conn, e, "credentials")
            raise

    def _cartridges(self, library: str) -> Cartridges:
        eng = self.engine
        return Cartridges(eng.media, self.catalog, library, eng.store.sb.uuid, self.clock.time)  # type: ignore

    # -- jobs (receive.py, runs.py) ----------------------------------------------------------------
    def run(self, policy_name: str, level: str | None = None, on_job: Callable[[int], None] | None = None) -> dict:
        """A run asked of the client's agent (the schedule, or 'backup run'), retried as the
        policy says when the client is unreachable. Returns the last attempt's job."""
        policy = self.catalog.policy(policy_name)
        if self.listener is None:
            raise UsageError(f"policy {policy_name!r} backs up a client: its runs go through the array's client "
                             "endpoint; start the array with --backup-listen (and the client's 'vstor client serve')")
        return self.runs.run(policy, level, on_job)

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
