"""Client agents on the array: the connections ``vstor client serve`` holds open, and the runs
the schedule (or ``backup run``) asks of them. One per ClientService.

Guarantees:

* a scheduled run that fails because the client is unreachable or the connection dropped is
  retried ``retries`` times, ``retry_delay`` seconds apart (on the engine's clock); after a
  dropped connection the retry first waits up to RECONNECT_GRACE seconds for the agent, which
  reconnects at once, to come back;
* an agent's connection is closed only after the job using it has ended (a new connection
  from the same agent replaces it for the next job).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vstor.backup.catalog import BackupCatalog
from vstor.backup.client import wire
from vstor.backup.client.array.admission import RETRYABLE, JobFailed, client_of
from vstor.backup.client.array.receive import Receiver
from vstor.backup.client.conn import Conn
from vstor.clock import Clock
from vstor.errors import NotRunning, VstorError

__all__ = ["RECONNECT_GRACE", "AgentLink", "Agents"]

log = logging.getLogger("vstor.backup")

RECONNECT_GRACE = 10.0  # seconds a retry waits for an agent whose connection dropped to come back


@dataclass
class AgentLink:
    conn: Conn
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: threading.Event = field(default_factory=threading.Event)


class Agents:
    """The connected agents (``links``: client name -> AgentLink) and the runs asked of them."""

    def __init__(self, catalog: BackupCatalog, clock: Clock, receiver: Receiver) -> None:
        self.catalog, self.clock, self.receiver = catalog, clock, receiver
        self.links: dict[str, AgentLink] = {}
        self._joined = threading.Condition()  # notified when an agent connects
        self.stop = threading.Event()

    def serve(self, conn: Conn, name: str) -> None:
        """Hold agent ``name``'s connection (already welcomed) until it is closed or replaced."""
        link = AgentLink(conn)
        conn.sock.settimeout(None)  # idle: the agent waits for our RUN or RESTORE
        with self._joined:
            old = self.links.get(name)
            self.links[name] = link
            self._joined.notify_all()
        if old is not None:
            old.closed.set()
        log.info("backup client %s: agent connected from %s", name, conn.peer_name)
        link.closed.wait()
        with link.lock, self._joined:  # a job still on this connection ends before it is closed
            if self.links.get(name) is link:
                del self.links[name]

    def stopping(self) -> None:
        """Wake every wait for an agent: the service is closing."""
        self.stop.set()
        with self._joined:
            self._joined.notify_all()

    def close(self) -> None:
        for link in list(self.links.values()):
            link.closed.set()
            with contextlib.suppress(OSError):
                link.conn.close()

    def run(self, policy: dict, level: str | None = None, on_job: Callable[[int], None] | None = None) -> dict:
        """A run asked of the client's agent, retried as ``policy`` says when the client is
        unreachable. Returns the last attempt's job."""
        tries = 1 + int(policy.get("retries") or 0)
        job = None
        for attempt in range(tries):
            if attempt and self.clock.wait(self.stop, float(policy.get("retry_delay") or 0)):
                break
            dropped = job is not None and "is unreachable" not in job["reason"]
            job = self._run_once(policy, level, on_job, RECONNECT_GRACE if dropped else 0.0)
            if job["status"] == "done" or not job["reason"].startswith("communication failure"):
                break
            log.warning("backup job %d of %s: %s; attempt %d of %d", job["id"], policy["name"], job["reason"],
                        attempt + 1, tries)
        assert job is not None
        return job

    def wait_for(self, name: str, grace: float) -> AgentLink | None:
        """The client's connected agent, waiting up to ``grace`` seconds for one to connect."""
        deadline = time.monotonic() + grace
        with self._joined:
            while True:
                link = self.links.get(name)
                if link is not None and not link.closed.is_set():
                    return link
                left = deadline - time.monotonic()
                if left <= 0 or self.stop.is_set():
                    return None
                self._joined.wait(left)

    def _run_once(self, policy: dict, level: str | None, on_job: Callable[[int], None] | None,
                  grace: float = 0.0) -> dict:
        name = client_of(policy["source"])
        job = self.receiver.new_job(policy, level)
        if on_job:
            on_job(job)
        link = self.wait_for(name or "", grace)
        if link is None:
            self.receiver.fail(job, NotRunning(f"client {name!r} is unreachable: its agent is not connected"))
            return self.catalog.job(job)
        with link.lock:
            try:
                client = self.catalog.client(name or "")
                link.conn.sock.settimeout(30.0)
                link.conn.send_json(wire.RUN, {"policy": policy["name"], "level": level, "job": job,
                                               "paths": client["paths"]})
                _, hello = link.conn.recv_json(wire.HELLO)
                self.receiver.push(link.conn, hello, client, job, policy["name"])
            except JobFailed as e:
                if e.code == RETRYABLE:
                    link.closed.set()
            except (OSError, VstorError) as e:
                link.closed.set()
                self.receiver.fail(job, e)
            finally:
                with contextlib.suppress(OSError):
                    link.conn.sock.settimeout(None)
        return self.catalog.job(job)
