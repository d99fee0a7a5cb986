"""Restore drills (Veeam SureBackup style, reference backup.md §4.1 and §4.3 item 7): restore the
latest restorable chain of a policy to scratch, check it in an isolated network namespace,
record the restore time, the check time and the result, and remove the scratch.

Guarantees:

* at most one drill runs at a time, and never while a backup job of the same policy runs (the
  engine, in turn, starts no job of a policy while its drill runs), so a drill and a job never
  contend for the policy's cartridges and drives;
* a drill is 'running' in the catalog, with its planned scratch, before anything is made; it
  ends 'passed' or 'failed' with one reason, and its scratch (volumes, loop devices, mounts,
  the network namespace, files) is removed in every case: a failed check, an error, a stop of
  the array (the check is killed) or, for a crash, at the next start (``recover``);
* scratch volumes are named ``vstor-drill-ID`` (``vstor-drill-ID-VOLUME`` for a group's): a
  name that exists already fails the drill before anything is restored, and no volume the drill
  did not create is ever deleted;
* scheduled drills run on their own cron schedules through the engine's tick (missed runs run
  once); drills of client policies restore into a scratch directory through ``dir_restorers``.
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections.abc import Callable

from vstor.backup.catalog import BackupCatalog
from vstor.backup.drill.catalog import DrillCatalog
from vstor.backup.drill.check import TAIL, CheckResult, make_netns, run_check
from vstor.backup.drill.scratch import CopyAttach, ImageAttach, remove_scratch
from vstor.backup.restore import Reader
from vstor.backup.rules.schedule import Scheduler, parse_cron
from vstor.clock import Clock
from vstor.errors import AlreadyExists, Busy, NotFound, UsageError, VstorError
from vstor.faults import NO_FAULTS, Faults
from vstor.store.store import Store

__all__ = ["DEFAULT_TIMEOUT", "SCRATCH_PREFIX", "DrillRunner", "latest_restorable", "source_kind"]

log = logging.getLogger("vstor.backup.drill")

SCRATCH_PREFIX = "vstor-drill-"
DEFAULT_TIMEOUT = 600.0  # seconds a check may take
DIR_CHECK = 'find "$VSTOR_DRILL_DIR" -type f -print0 | xargs -0r cat > /dev/null'  # a client drill's default

DirRestorer = Callable[[int, str], dict]  # (job, directory) -> {"bytes", "seconds"}


def source_kind(source: str) -> str:
    """'client' for a ``client:NAME`` policy (a file tree), else 'volume' (a volume or group)."""
    return "client" if source.startswith("client:") else "volume"


def latest_restorable(catalog: BackupCatalog, policy: str) -> int:
    """The newest done job of ``policy`` whose whole chain is restorable."""
    why = "it has no done jobs"
    for job in catalog.jobs(policy, "done"):
        try:
            catalog.chain(job["id"])
            return int(job["id"])
        except UsageError as e:
            why = e.message
    raise NotFound(f"policy {policy!r} has nothing to restore: {why} (run 'vstor backup run {policy}' first)")


class DrillRunner:
    def __init__(self, store: Store, catalog: BackupCatalog, reader: Reader, clock: Clock,
                 job_running: Callable[[str], bool], audit: Callable[[str, dict], object],
                 faults: Faults = NO_FAULTS, claim_lock: threading.Lock | None = None, mount: str | None = None
                 ) -> None:
        """``mount``: the daemon's FUSE mount, through which scratch volumes go on loop devices
        (None offline: scratch images are copies)."""
        self.store, self.catalog, self.reader, self.clock, self.faults = store, catalog, reader, clock, faults
        self.records = DrillCatalog(catalog.name, clock, catalog.databases)
        self._job_running, self._audit = job_running, audit
        self.mount = mount
        self.dir_restorers: dict[str, DirRestorer] = {}  # source kind -> restore of a job into a directory
        self.dir = os.path.join(store.pool, "backup", "drills")
        # Held while a drill is claimed: the engine passes the lock it starts jobs under, so "no job of
        # the policy runs" and "the drill is claimed" are one step against its job starts.
        self._lock = claim_lock or threading.Lock()
        self._active: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.scheduler = Scheduler(clock, self._scheduled, self._last_fire, self.records.record_fire,
                                   lambda name: self.start(name), self._blocked)
        self.recover()

    # -- definitions ---------------------------------------------------------------------------
    def define(self, policy: str, schedule: str | None, check: str | None, timeout: float | None) -> dict:
        self.catalog.policy(policy)  # NotFound names the command that lists them
        if check is not None:
            check = os.path.abspath(check)
            if not os.access(check, os.X_OK) or not os.path.isfile(check):
                raise UsageError(f"check script {check} is not an executable file on the array host: "
                                 "give a script with its execute bit set")
        try:
            old = self.records.definition(policy)
        except NotFound:
            old = {}
        when: str | None = parse_cron(schedule) if schedule else old.get("schedule")
        check_cmd: str | None = check or old.get("check")
        limit = float(timeout or old.get("timeout") or DEFAULT_TIMEOUT)
        doc = {"policy": policy, "schedule": when, "check": check_cmd, "timeout": limit}
        if timeout is not None and timeout <= 0:
            raise UsageError(f"invalid drill timeout {timeout}: give a positive duration, like 10m")
        self._audit("backup.drill.define", doc)
        return self.records.define(policy, when, check_cmd, limit)

    def remove(self, policy: str) -> dict:
        self.records.definition(policy)
        self._audit("backup.drill.remove", {"policy": policy})
        return self.records.remove(policy)

    def definitions(self) -> list[dict]:
        return [d | {"next_run": self.scheduler.next_for(self._as_policy(d))} for d in self.records.definitions()]

    @staticmethod
    def _as_policy(d: dict) -> dict:
        return {"name": d["policy"], "schedule": d["schedule"], "created": d["created"]}

    def _scheduled(self) -> list[dict]:
        return [self._as_policy(d) for d in self.records.definitions() if d["schedule"]]

    def _last_fire(self, policy: str) -> float | None:
        return self.records.definition(policy).get("last_fire")

    def _blocked(self, policy: str) -> bool:
        return self._active is not None or self._job_running(policy)

    def busy(self, policy: str) -> bool:
        """A drill of ``policy`` is running (the engine starts no job of it meanwhile)."""
        return self._active == policy

    # -- runs ----------------------------------------------------------------------------------
    def _claim(self, policy: str) -> None:
        self.catalog.policy(policy)
        with self._lock:
            if self._active is not None:
                raise Busy(f"a restore drill of policy {self._active!r} is running; drills run one at a time")
            if self._job_running(policy):
                raise Busy(f"a backup job of policy {policy!r} is running; drill it once the job ends")
            self._active = policy

    def run(self, policy: str) -> dict:
        """Run a drill of ``policy`` now and wait for it; returns the drill record."""
        self._claim(policy)
        return self._run_claimed(policy)

    def start(self, policy: str) -> None:
        """Start a drill of ``policy`` in a thread (the scheduler's way)."""
        self._claim(policy)
        t = threading.Thread(target=self._run_claimed, args=(policy,), name=f"vstor-drill-{policy}", daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def join(self, timeout: float = 60.0) -> None:
        """Wait for drills started in threads (tests and close)."""
        for t in list(self._threads):
            t.join(timeout)

    def tick(self) -> list[str]:
        if self.mount and not os.path.ismount(self.mount):
            return []  # the daemon's FUSE mount is not up yet: scratch volumes could not be attached
        return [f"drill {line}" for line in self.scheduler.tick()]

    def _run_claimed(self, policy: str) -> dict:
        try:
            try:
                d = self.records.definition(policy)
            except NotFound:
                d = {"check": None, "timeout": DEFAULT_TIMEOUT}
            kind = source_kind(self.catalog.policy(policy)["source"])
            check = d["check"] or ("e2fsck -fn" if kind == "volume" else "read every file")
            drill = self.records.new(policy, kind, check, {})
            tag = f"{zlib.crc32(os.path.abspath(self.store.pool).encode()):08x}"
            scratch = {"base": f"{SCRATCH_PREFIX}{drill}", "netns": f"vstor-drill-{tag}-{drill}",
                       "dir": os.path.join(self.dir, str(drill))}
            fields: dict = {}
            try:
                self.records.set(drill, scratch=scratch)  # before anything is made: a crash finds it all
                fields = self._drill(drill, policy, kind, d, scratch)
            except Exception as e:  # noqa: BLE001 - every failure is a failed drill with one line
                why = e.message if isinstance(e, VstorError) else f"internal error {type(e).__name__}: {e}"
                fields |= {"status": "failed", "reason": why}
            finally:
                problems = remove_scratch(self.store, scratch)
            if problems:
                fields |= {"status": "failed", "reason": "; ".join(filter(None, [fields.get("reason"),
                                                                              "scratch left: " + "; ".join(problems)]))}
            self.records.set(drill, ended=self.clock.time(), scratch=scratch, **fields)
            out = self.records.drill(drill)
            log.info("restore drill %d of %s: %s %s", drill, policy, out["status"], out["reason"])
            return out
        finally:
            with self._lock:
                self._active = None

    def _drill(self, drill: int, policy: str, kind: str, d: dict, scratch: dict) -> dict:
        def record(s: dict) -> None:
            self.records.set(drill, scratch=s)

        job = latest_restorable(self.catalog, policy)
        self.records.set(drill, job=job)
        os.makedirs(scratch["dir"], mode=0o700, exist_ok=True)
        out: dict = {"job": job}
        if kind == "volume":
            names = list(self.reader.targets(self.catalog.job(job), scratch["base"]).values())
            for name in names:
                try:
                    self.store.volume(name)
                except NotFound:
                    continue
                raise AlreadyExists(f"volume {name!r} exists, so the drill cannot use it as scratch: rename or "
                                    "delete it (names starting with 'vstor-drill-' are the drills')")
            scratch["volumes"] = names
            record(scratch)
            r = self.reader.restore(job, scratch["base"])
        else:
            restorer = self.dir_restorers.get(kind)
            if restorer is None:
                raise UsageError(f"policy {policy!r} backs up a {kind}; this vstor cannot restore it to a directory")
            target = os.path.join(scratch["dir"], "tree")
            os.makedirs(target)
            r = restorer(job, target)
        out |= {"bytes": int(r.get("bytes") or 0), "restore_s": float(r.get("seconds") or 0.0)}
        self.records.set(drill, **out)
        self.faults.hit("drill.restored")
        make_netns(scratch["netns"])
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "VSTOR_DRILL_JOB": str(job),
               "VSTOR_DRILL_POLICY": policy, "VSTOR_DRILL_ID": str(drill)}
        results: list[tuple[str, CheckResult]] = []
        if kind == "volume":
            attacher = ImageAttach(self.mount) if self.mount else CopyAttach()
            for name in scratch["volumes"]:
                got = attacher.attach(self.store, name, scratch, record, want_mount=bool(d["check"]))
                e = env | {"VSTOR_DRILL_DEVICE": got["device"], "VSTOR_DRILL_VOLUME": name}
                if got.get("mount"):
                    e["VSTOR_DRILL_MOUNT"] = got["mount"]
                argv = [d["check"]] if d["check"] else ["e2fsck", "-fn", got["device"]]
                self.faults.hit("drill.check")
                results.append((name, run_check(argv, scratch["netns"], e, got.get("mount") or scratch["dir"],
                                                d["timeout"], self._stop)))
        else:
            tree = os.path.join(scratch["dir"], "tree")
            e = env | {"VSTOR_DRILL_DIR": tree}
            argv = [d["check"]] if d["check"] else ["sh", "-c", DIR_CHECK]
            self.faults.hit("drill.check")
            results.append((tree, run_check(argv, scratch["netns"], e, tree, d["timeout"], self._stop)))
        return out | _verdict(results, d["timeout"])

    # -- clean-up ------------------------------------------------------------------------------
    def recover(self) -> None:
        """Remove the scratch of drills a crash cut short (the catalog already marked them failed)."""
        for drill in self.records.interrupted:
            log.error("restore drill %d of %s was interrupted by the daemon's stop or crash: marked failed",
                      drill["id"], drill["policy"])
            problems = remove_scratch(self.store, drill["scratch"])
            if problems:
                log.error("restore drill %d: scratch left after the clean-up: %s", drill["id"], "; ".join(problems))
                self.records.set(drill["id"], reason=drill["reason"] + "; scratch left: " + "; ".join(problems))
        self.records.interrupted = []

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.join(timeout)
        self.records.close()


def _verdict(results: list[tuple[str, CheckResult]], timeout: float) -> dict:
    """The drill's fields from its checks: passed only if every check exited 0."""
    failed = []
    for what, r in results:
        if r.timed_out:
            failed.append(f"the check of {what} did not end within {timeout:.0f}s and was killed")
        elif r.stopped:
            failed.append("the array is stopping: the check was killed")
        elif r.exit_code != 0:
            failed.append(f"the check of {what} exited {r.exit_code}")
    output = "".join(f"== {what} ==\n{r.output}" if len(results) > 1 else r.output for what, r in results)
    codes = [r.exit_code for _w, r in results]
    return {"status": "failed" if failed else "passed", "reason": "; ".join(failed),
            "check_s": sum(r.seconds for _w, r in results), "output": output[-TAIL:],
            "exit_code": next((c for c in codes if c != 0), 0)}
