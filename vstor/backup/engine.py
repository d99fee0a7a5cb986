"""The backup engine: policies, runs (by hand or by schedule), verify, restore, retention.

One engine per pool, inside the daemon (or opened by an offline admin command). Its state
lives in ``POOL/backup/``: the SQLite catalog, the hash-chained audit log and the key ids.
Guarantees:

* two runs of one policy never overlap: a second ``run`` is refused (Busy), and the
  scheduler waits for the running one;
* a job is in the catalog from the moment it is asked for; it ends done or failed, with one
  clear reason, and a job the daemon's death interrupted is failed at the next start;
* a job that cannot get a drive waits, with the reason in ``backup jobs``;
* every change to a policy, to keys or to retention is written to the audit log first.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable

from vstor.backup.audit import AuditLog, current_actor
from vstor.backup.catalog import BackupCatalog
from vstor.backup.catalogdb import CATALOG, Databases, catalog_databases
from vstor.backup.client.array.admission import client_of
from vstor.backup.client.array.service import ClientService
from vstor.backup.drill.runner import DrillRunner
from vstor.backup.jobs import JobWriter, drop_snapshot, snapshot_name
from vstor.backup.keys import BackupKeys
from vstor.backup.media.cartridges import Cartridges
from vstor.backup.rebuild import rebuild
from vstor.backup.restore import Reader
from vstor.backup.rules.policy import level_for, make_policy
from vstor.backup.rules.schedule import Scheduler
from vstor.clock import Clock, SystemClock
from vstor.errors import Busy, UsageError, VstorError
from vstor.faults import NO_FAULTS, Faults
from vstor.hooks import HookRunner, ShellRunner
from vstor.media.manager import MediaManager
from vstor.store.catalog import compliance
from vstor.store.store import Store

log = logging.getLogger("vstor.backup")

SETTINGS = "settings.json"  # engine-wide settings: key rotation by age
DRIVE_POLL = 5.0  # seconds between looks for a free drive while a job waits


class BackupEngine:
    def __init__(self, store: Store, media: MediaManager, clock: Clock | None = None,
                 faults: Faults = NO_FAULTS, hooks: HookRunner | None = None, mount: str | None = None,
                 databases: Databases | None = None) -> None:
        """``hooks``: runs the policies' pre/post commands (hooks.ShellRunner by default);
        ``mount``: the daemon's FUSE mount, for restore drills' scratch volumes; ``databases``:
        where the catalog is (default: the pool's kind, catalogdb.catalog_databases)."""
        self.store, self.media, self.faults = store, media, faults
        self.hooks: HookRunner = hooks or ShellRunner(faults)
        self.clock = clock or SystemClock()
        self.dir = os.path.join(store.pool, "backup")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.catalog = BackupCatalog(CATALOG, self.clock, databases or catalog_databases(store.pool, store.backend))
        self.files = store.files.sub("backup")  # audit.log, keys.json, settings.json, clients/NAME.key (PoolFiles)
        self.audit = AuditLog(self.files, self.clock)
        self.keys = BackupKeys(self.files, store.backup_key, self.clock)
        self.reader = Reader(store, self.catalog, self.keys, self._cartridges)
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}  # policy -> job id
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.clients = ClientService(self)  # backup clients: registry, listener, their jobs
        self.scheduler = Scheduler(self.clock, self.catalog.policies, self._last_fire, self._record_fire,
                                   lambda name: self.start(name, None),
                                   lambda name: name in self._running or self.clients.busy(name)
                                   or self.drills.busy(name))
        for job in self.catalog.recovered_jobs:
            log.error("backup job %d was interrupted by the daemon's stop or crash: marked failed", job)
            self._clean_up_after(job)
        self.drills = DrillRunner(store, self.catalog, self.reader, self.clock,
                                  lambda name: name in self._running or self.clients.busy(name),
                                  lambda action, details: self.audit.append(current_actor(), action, details),
                                  faults, claim_lock=self._lock, mount=mount)
        self.drills.dir_restorers["client"] = lambda job, target: self.clients.restore(job, to=target)

    def _clean_up_after(self, job: int) -> None:
        """An interrupted job's leftovers: its snapshot, and its policy's cartridges still in drives."""
        row = self.catalog.job(job)
        try:
            drop_snapshot(self.store, row["source"], job)
            policy = self.catalog.policy(row["policy"])
            lib = self.media.lib(policy["library"])
            for drive, code in enumerate(lib.drives):
                if code in policy["media"]:
                    self.media.unload(lib.name, drive)
        except VstorError as e:  # the job is failed anyway; say what is left over
            log.error("after interrupted backup job %d: %s", job, e)

    def _cartridges(self, library: str) -> Cartridges:
        return Cartridges(self.media, self.catalog, library, self.store.sb.uuid, self.clock.time)

    # -- policies -------------------------------------------------------------------------------
    def create_policy(self, **fields: object) -> dict:
        policy = make_policy(**fields)  # type: ignore[arg-type]
        if client_of(policy["source"]) is not None:
            self.catalog.client(client_of(policy["source"]) or "")  # NotFound: register the client first
        else:
            with self.store.locked():
                self.store.state.catalog.owner(self.store.state.table, policy["source"])  # NotFound if neither
        lib = self.media.lib(policy["library"])
        if lib.type != "tape":
            raise UsageError(f"library {lib.name} is an optical library; backup policies write to tape libraries")
        for b in policy["media"]:
            lib.medium(b)  # NotFound names the library
        if policy["encrypt"]:
            self.keys.current()  # UsageError without a pool key
        if any(p["name"] == policy["name"] for p in self.catalog.policies()):
            raise UsageError(f"policy {policy['name']!r} already exists; delete it first or choose another name")
        policy["created"] = self.clock.time()
        self.audit.append(current_actor(), "backup.policy.create", policy)
        self.catalog.put_policy(policy)
        return self.catalog.policy(policy["name"])

    def delete_policy(self, name: str) -> dict:
        policy = self.catalog.policy(name)
        compliance.refuse_if_locked(self.store.files, self.clock, (compliance.policy_key(name),),
                                    f"backup policy {name!r}", "deleted")
        if name in self._running:
            raise Busy(f"a job of policy {name!r} is running (job {self._running[name]}); wait for it to end")
        if self.drills.busy(name):
            raise Busy(f"a restore drill of policy {name!r} is running; wait for it to end")
        self.audit.append(current_actor(), "backup.policy.delete", {"name": name})
        self.catalog.delete_policy(name)
        if any(d["policy"] == name for d in self.drills.records.definitions()):
            self.drills.remove(name)  # a drill of a deleted policy could only fail; its history stays
        return policy

    def _last_fire(self, name: str) -> float | None:
        return self.catalog.policy(name).get("last_fire")

    def _record_fire(self, name: str, when: float) -> None:
        self.catalog.put_policy(self.catalog.policy(name) | {"last_fire": when})

    # -- runs ------------------------------------------------------------------------------------
    def start(self, name: str, level: str | None, progress: Callable[[int, int], None] | None = None) -> int:
        """Queue a run of policy ``name``; returns its job id. The job runs in a thread."""
        if client_of(self.catalog.policy(name)["source"]) is not None:
            return self._start_client(name, level)
        job, args = self._prepare(name, level)
        t = threading.Thread(target=self._run, args=(*args, progress), name=f"vstor-backup-{job}", daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()
        return job

    def run(self, name: str, level: str | None, progress: Callable[[int, int], None] | None = None) -> dict:
        """Run policy ``name`` now and wait for the job to end; returns the job."""
        if client_of(self.catalog.policy(name)["source"]) is not None:
            return self.clients.run(name, level)
        job, args = self._prepare(name, level)
        self._run(*args, progress)
        return self.catalog.job(job)

    def _start_client(self, name: str, level: str | None) -> int:
        """A client policy's run in a thread (asked of its agent, retried as the policy says)."""
        got: list[int] = []
        ready = threading.Event()

        def on_job(job: int) -> None:
            if not got:
                got.append(job)
                ready.set()

        def body() -> None:
            try:
                self.clients.run(name, level, on_job)
            except Exception as e:  # noqa: BLE001 - logged; a job, if any, says why it failed
                log.error("backup run of client policy %s failed: %s", name, e)
            finally:
                ready.set()

        t = threading.Thread(target=body, name=f"vstor-backup-{name}", daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()
        ready.wait()
        if not got:
            raise Busy(f"a job of client policy {name!r} is already running, or the run failed to start "
                       "(see the daemon log)")
        return got[0]

    def _prepare(self, name: str, asked: str | None) -> tuple[int, tuple[int, dict, str, dict | None, int | None]]:
        policy = self.catalog.policy(name)
        with self._lock:
            if name in self._running:
                raise Busy(f"a job of policy {name!r} is already running (job {self._running[name]})")
            if self.drills.busy(name):
                raise Busy(f"a restore drill of policy {name!r} is running; run the job once it ends")
            now = self.clock.time()
            last_done = self.catalog.last_done(name)
            level = level_for(policy, asked, self.catalog.last_full(name), last_done, now)
            base = last_done if level == "incremental" else None
            key_id = self.keys.current() if policy["encrypt"] else None
            job = self.catalog.new_job(name, level, policy["source"], base["id"] if base else None, key_id,
                                       now + policy["retention"])
            self._running[name] = job
        return job, (job, policy, level, base, key_id)

    def _run(self, job: int, policy: dict, level: str, base: dict | None, key_id: int | None,
             progress: Callable[[int, int], None] | None) -> None:
        carts = self._cartridges(policy["library"])
        writer = JobWriter(self.store, carts, self.catalog, self.faults, self.hooks)
        try:
            self._wait_for_drive(job, carts)
            self.catalog.set_job(job, status="running", reason="", started=self.clock.time())
            key = self.keys.key(key_id) if key_id else None
            result = writer.run(job, policy, level, base, key, key_id, progress)
            self.catalog.set_job(job, status="done", ended=self.clock.time(), **result)
            log.info("backup job %d (%s, %s) done: %d bytes", job, policy["name"], level, result["bytes"])
            for old in self.catalog.jobs(policy["name"]):
                if old["id"] != job and old.get("snapshot"):
                    drop_snapshot(self.store, policy["source"], old["id"])
        except Exception as e:  # noqa: BLE001 - every failure becomes a failed job with one line
            why = e.message if isinstance(e, VstorError) else f"internal error {type(e).__name__}: {e}"
            log.error("backup job %d (%s) failed: %s", job, policy["name"], why)
            self.catalog.set_job(job, status="failed", reason=why, ended=self.clock.time())
            carts.release()
            try:
                drop_snapshot(self.store, policy["source"], job)
            except VstorError as e2:
                log.error("backup job %d: cannot delete its snapshot %s: %s", job, snapshot_name(job), e2)
            return
        finally:
            with self._lock:
                self._running.pop(policy["name"], None)
        if policy.get("verify", True):
            self.reader.verify(job)

    def _wait_for_drive(self, job: int, carts: Cartridges) -> None:
        shown = ""
        while True:
            try:
                carts.free_drive()
                return
            except Busy as e:
                if e.message != shown:  # the reason `backup jobs` shows while the job waits
                    self.catalog.set_job(job, reason=e.message)
                    shown = e.message
                if self.clock.wait(self._stop, DRIVE_POLL):
                    raise VstorError("the array is stopping: the job did not start") from None

    # -- the rest ------------------------------------------------------------------------------
    def refresh_locations(self) -> None:
        """Mark each backup cartridge offsite or back in its library, as the library has it now
        (exported through the mail slot and taken out, or imported again)."""
        for row in self.catalog.media_list():
            try:
                lib = self.media.lib(row["library"])
            except VstorError:
                continue
            inside = row["barcode"] in (*lib.slots, *lib.drives, *lib.mailslots)
            where = "library" if inside else "offsite"
            if row.get("location") != where:
                self.catalog.set_media(row["barcode"], location=where)

    def rebuild(self, library: str, barcodes: list[str] | None = None) -> dict:
        """Rebuild the catalog's jobs from the cartridges' job headers (rebuild.py)."""
        return rebuild(self.media, self.catalog, self._cartridges(library), self.reader, barcodes)

    def verify(self, job: int) -> dict:
        return self.reader.verify(job)

    def restore(self, job: int, to: str, progress: Callable[[int, int], None] | None = None) -> dict:
        return self.reader.restore(job, to, progress)

    def tick(self) -> list[str]:
        """The scheduler's turn (the daemon calls it periodically), and key rotation by age."""
        done = self.scheduler.tick() + self.drills.tick()
        every = self.settings().get("key_rotate_every")
        if every:
            new = self.keys.rotate_if_older(every)
            if new is not None:
                self.audit.append("vstor (key rotation by age)", "key.rotate", {"key_id": new, "every": every})
                done.append(f"rotated the backup key: new jobs use key id {new}")
        return done

    def settings(self) -> dict:
        raw = self.files.read(SETTINGS)
        return {} if raw is None else json.loads(raw)

    def set_setting(self, name: str, value: object) -> None:
        doc = self.settings() | {name: value}
        self.files.write(SETTINGS, json.dumps(doc, sort_keys=True).encode())

    def serve(self, interval: float = 30.0) -> threading.Thread:
        """Tick the scheduler every ``interval`` seconds until :meth:`close`."""
        def loop() -> None:
            self._tick_logged()
            while not self.clock.wait(self._stop, interval):
                self._tick_logged()

        t = threading.Thread(target=loop, name="vstor-backup-scheduler", daemon=True)
        t.start()
        self._threads.append(t)
        return t

    def _tick_logged(self) -> None:
        try:
            for line in self.tick():
                log.info("backup schedule: %s", line)
        except Exception as e:  # noqa: BLE001 - the scheduler keeps going
            log.error("backup scheduler failed: %s", e)

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.clients.close()
        self.drills.close(timeout)
        for t in self._threads:
            t.join(timeout)
        self.catalog.close()
