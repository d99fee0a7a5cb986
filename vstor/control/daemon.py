"""The array daemon: one process per pool.

Start-up order: take the pool lock, open and recover the store, start maintenance, media,
replication and the control socket, mount FUSE. Each resource is registered on one
``ExitStack`` as soon as it is acquired, so a failure at any step, and the normal shutdown,
release exactly what was acquired, in reverse order. Each step has a fault point
``daemon.start.<step>`` (see START_STEPS and vstor/faults.py) that fires just after it.

The daemon reports "READY" (or "ERROR <exit> <type> <message>") on the descriptor given by
--ready-fd once the kernel has completed FUSE INIT, so ``vstor array start`` returns only
when the images can be used. Run by systemd (``vstor@.service``, Type=notify), it also sends
READY=1 then, and STOPPING=1 when the FUSE loop ends (vstor/control/host/sdnotify.py).

Shutdown (``vstor array stop``, SIGTERM or SIGINT): the journal is synced, FUSE unmounted,
the control socket, replication, media and maintenance stopped, a final checkpoint written,
and the lock released last. If the journal has failed, there is no sync and no checkpoint,
and the journal is closed without sealing its segment. Errors go to POOL/log/daemon.log,
one line each.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

from vstor.backup.engine import BackupEngine
from vstor.control.host import sdnotify
from vstor.control.host.lock import PoolLock
from vstor.control.host.mallocpolicy import keep_heap
from vstor.control.host.mounts import fsname_for, fuse_mounted, prepare_mountpoint, unmount
from vstor.control.host.pygc import GcPolicy
from vstor.control.outagewatch import OutageWatch
from vstor.control.poolfiles import pool_log_handler
from vstor.control.server import ControlServer
from vstor.control.service import PoolService
from vstor.control.takeover import record_takeover
from vstor.errlog import TRACE, describe, install_thread_hook, log_failure
from vstor.errors import Busy, VstorError
from vstor.faults import Faults
from vstor.fuse.handles import HandleTable
from vstor.fuse.options import after_init, mount_options, set_io_flusher
from vstor.media.manager import MediaManager, media_files
from vstor.replication.manager import Replication
from vstor.store.maintenance.reclaim import Reclaimer
from vstor.store.store import Store
from vstor.store.superblock import layout

if TYPE_CHECKING:
    from vstor.fuse.ops import VolumeFS
    from vstor.nbd.server import NbdServer

log = logging.getLogger("vstor.daemon")

START_STEPS = ("lock", "store", "maintenance", "gcpolicy", "mountpoint", "media", "backup", "replication", "control",
               "nbd", "metrics", "mount")
"""The start-up steps in order; fault point ``daemon.start.<step>`` fires right after each
(``mount``: once the kernel has completed FUSE INIT, before READY is sent)."""


def setup_logging(pool: str, foreground: bool) -> None:
    """INFO and up to POOL/log/daemon.log (and stderr in the foreground or under systemd, for
    the journal); tracebacks, logged at debug level on ``vstor.trace``, to the file only."""
    handlers: list[logging.Handler] = [pool_log_handler(pool)]  # log/daemon.log, owner only
    err = sdnotify.stderr_handler(foreground)
    if err is not None:
        handlers.append(err)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    TRACE.setLevel(logging.DEBUG)
    install_thread_hook(log)


class Reporter:
    """Writes the one-line start-up outcome to the parent, once."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.sent = False
        self.lock = threading.Lock()

    def send(self, line: str) -> None:
        with self.lock:
            if self.sent:
                return
            self.sent = True
            if self.fd is None:
                return
            try:
                os.write(self.fd, (line + "\n").encode())
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


def run(pool: str, mount: str, key_file: str | None, reporter: Reporter, threads: bool = True,
        repl: dict | None = None, faults: Faults | None = None, metrics: str | None = None,
        nbd: dict | None = None, backup_listen: str | None = None, takeover: bool = False) -> int:
    """Start the array, serve until unmounted, stop it; raises if start-up fails, after
    releasing whatever it had acquired. ``takeover``: a RADOS pool's live owner on another
    host is fenced first (vstor/store/backend/rados/lock.py)."""
    from vstor.fuse.media_fs import MediaFS
    from vstor.fuse.ops import VolumeFS, serve
    from vstor.fuse.ops import fuse as mfuse

    faults = faults or Faults.from_env()

    def step(name: str) -> None:
        faults.hit("daemon.start." + name)

    mount = os.path.abspath(mount)
    with contextlib.ExitStack() as stack:
        stack.callback(log.info, "stopped")
        lock = PoolLock(pool)
        lock.acquire("daemon", takeover=takeover)
        stack.callback(lock.release)
        step("lock")
        io_flusher = set_io_flusher()
        store = Store.open(pool, key_file, faults=faults, backend=lock.store_backend(faults))  # RADOS: lock's client
        stack.callback(store.close)  # no checkpoint if the journal failed
        watch = OutageWatch(store, renew_lock=lock.renew_rados)  # resumes after an outage of the RADOS cluster
        lock.when_lost(watch.lock_lost)  # RADOS lock lost or fenced: no more writes (suspended if timed out)
        if store.backend.kind != "local":
            watch.start()
            stack.callback(watch.stop)
        if lock.fenced is not None and lock.rados is not None:  # audit log and daemon.log: who was fenced
            record_takeover(store.files.sub("backup"), store.clock, lock.rados.location, lock.fenced, log)
        step("store")
        handles = HandleTable()  # the FUSE export's open files: policy pruning skips snapshots in use
        reclaimer = Reclaimer(store, snapshots_in_use=handles.snapshots_in_use)
        reclaimer.start()
        stack.callback(reclaimer.stop)
        step("maintenance")
        gcpolicy = GcPolicy()  # freezes the maps just loaded out of the cyclic collector's walk
        gcpolicy.start()
        if not keep_heap():  # request buffers reused, not trimmed and faulted in again (mallocpolicy.py)
            log.info("mallopt unavailable (not glibc): the heap is trimmed as the C library decides")
        stack.callback(gcpolicy.stop)
        step("gcpolicy")
        prepare_mountpoint(mount, pool)
        step("mountpoint")
        failed: list[BaseException] = []  # a failure after FUSE INIT, raised once the loop ends
        media = MediaManager(store.pool, store.media_key, files=media_files(store.pool, store.backend),
                             state=store.files)
        stack.callback(media.close)
        fs = VolumeFS(store, on_ready=lambda conn: after_init(mount, lambda: _ready(mount, faults, reporter, failed)),
                      extra_stats=lambda: {"daemon": {"pid": os.getpid(), "io_flusher": io_flusher,
                                                     "py_gc": gcpolicy.stats()}},
                      media=MediaFS(media, mfuse.FuseOSError), handles=handles)
        step("media")
        backup = BackupEngine(store, media, faults=faults, mount=mount)  # drills attach scratch through FUSE
        stack.callback(backup.close)  # before media.close: a running job stops first
        backup.serve()
        if backup_listen:  # the endpoint backup clients push to and agents call in on
            backup.clients.listen(backup_listen, (repl or {}).get("tls_dir") or "", (repl or {}).get("name"))
        step("backup")
        replication = Replication(store, faults=faults, **(repl or {}))
        stack.callback(replication.stop)  # before start: it may fail after starting shippers
        replication.start()
        step("replication")
        nbd_server = None
        if nbd and nbd.get("address"):  # NBD remote attach (vstor/nbd); stopped before the store closes
            nbd_server = _start_nbd(store, fs, nbd, faults)
            stack.callback(nbd_server.stop)
        step("nbd")
        service = PoolService(store, mount, fs, reclaimer, media=media, backup=backup, replication=replication,
                              nbd=nbd_server, stop_requested=lambda: _unmount_soon(mount))
        server = ControlServer(layout(pool)["socket"], service)
        stack.callback(server.stop)
        server.start()
        step("control")
        if metrics:  # Prometheus /metrics and the dashboard; off unless asked for
            from vstor.control.metrics import MetricsServer, Sources

            exporter = MetricsServer(metrics, Sources(store, fs, reclaimer, replication, media, backup))
            stack.callback(exporter.stop)
            exporter.start()
        step("metrics")
        stack.callback(_unmount_if_mounted, mount)  # the FUSE loop unmounts; this, if it died mounted
        log.info("serving pool %s at %s (pid %d, io_flusher=%s)", pool, mount, os.getpid(), io_flusher)
        try:
            serve(fs, mount, mount_options(fsname_for(pool), threads))
        except RuntimeError as e:  # libfuse's non-zero return, e.g. after SIGTERM/SIGINT
            log.info("FUSE loop ended with status %s (signal or unmount)", e)
        sdnotify.notify(f"STOPPING=1\nSTATUS=stopping: {mount} unmounted, closing the store")
        if failed:
            raise failed[0]
        if store.journal.failed:
            log.error("the journal had failed (%s): closing the store without a final checkpoint; "
                      "run 'vstor pool check %s'", store.journal.failed, pool)
        else:
            log.info("unmounted %s; closing the store", mount)
    return 0


def _start_nbd(store: Store, fs: VolumeFS, nbd: dict, faults: Faults) -> NbdServer:
    from vstor.nbd.catalog import ExportCatalog
    from vstor.nbd.server import NbdServer
    from vstor.nbd.serving.poll import NBD_POLL

    catalog = ExportCatalog(store, fs.volumes_in_use)
    poll_us = nbd.get("poll_us")
    server = NbdServer(nbd["address"], store, catalog, tls_dir=nbd.get("tls_dir"), tls_name=nbd.get("name"),
                       faults=faults, poll=NBD_POLL if poll_us is None else poll_us / 1e6)
    server.start()
    return server


def _ready(mount: str, faults: Faults, reporter: Reporter, failed: list[BaseException]) -> None:
    """FUSE INIT is complete: report READY, or on an injected failure end the FUSE loop."""
    try:
        faults.hit("daemon.start.mount")
    except Exception as e:
        failed.append(e)
        _unmount_soon(mount)
        return
    reporter.send("READY")
    sdnotify.notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving the volumes at {mount}")


def _unmount_soon(mount: str) -> None:
    """Unmount from another thread: the caller may be serving a FUSE or control request."""
    threading.Thread(target=_unmount_quietly, args=(mount,), name="vstor-unmount").start()


def _unmount_quietly(mount: str, tries: int = 20, pause: float = 0.1) -> None:
    """Unmount so that the FUSE loop ends. Right after FUSE INIT the kernel can still hold the
    new mount for a moment (EBUSY; the daemon then waited for ever on a loop nothing ended), so
    a busy mount is tried again for about two seconds and then detached lazily."""
    for _ in range(tries):
        try:
            unmount(mount)
            return
        except Busy:
            time.sleep(pause)
        except VstorError as e:
            log_failure(log, f"unmount of {mount} failed", e)
            return
    log.warning("%s stayed busy for %.1f s; unmounting it lazily", mount, tries * pause)
    try:
        unmount(mount, lazy=True)
    except VstorError as e:
        log_failure(log, f"unmount of {mount} failed", e)


def _unmount_if_mounted(mount: str) -> None:
    if fuse_mounted(mount):
        log.warning("%s is still mounted after the FUSE loop ended; unmounting it lazily", mount)
        with contextlib.suppress(VstorError):
            unmount(mount, lazy=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vstor-daemon")
    p.add_argument("--pool", required=True)
    p.add_argument("--mount", required=True)
    p.add_argument("--key-file")
    p.add_argument("--ready-fd", type=int)
    p.add_argument("--foreground", action="store_true")
    p.add_argument("--single-thread", action="store_true")
    p.add_argument("--listen")
    p.add_argument("--tls-dir")
    p.add_argument("--name")
    p.add_argument("--metrics")
    p.add_argument("--nbd")
    p.add_argument("--nbd-tls-dir")
    p.add_argument("--nbd-poll-us", type=int)
    p.add_argument("--backup-listen")
    p.add_argument("--takeover", action="store_true")
    a = p.parse_args(argv)
    repl = {"listen": a.listen, "tls_dir": a.tls_dir, "name": a.name}
    setup_logging(a.pool, a.foreground)
    reporter = Reporter(a.ready_fd)
    log_hint = os.path.join(layout(a.pool)["log"], "daemon.log")
    try:
        return run(a.pool, a.mount, a.key_file, reporter, threads=not a.single_thread, repl=repl,
                   metrics=a.metrics, nbd={"address": a.nbd, "tls_dir": a.nbd_tls_dir, "name": a.name,
                                                 "poll_us": a.nbd_poll_us},
                   backup_listen=a.backup_listen, takeover=a.takeover)
    except Exception as e:
        phase = "the daemon failed" if reporter.sent else "start-up failed"
        log_failure(log, phase, e)
        if isinstance(e, VstorError):
            err = e
        elif isinstance(e, OSError):  # the system refused something: no bug, but no message of ours
            err = VstorError(f"{phase}: {describe(e)} (see {log_hint})")
        else:
            err = VstorError(f"{phase}: internal error {describe(e)} (see {log_hint})")
            err.exit_code = 70
        reporter.send(f"ERROR {err.exit_code} {type(err).__name__} {describe(err)}")
        sdnotify.notify(f"STATUS={describe(err)}")
        if a.foreground:
            print(f"vstor: error: {describe(err)}", file=sys.stderr)
        return err.exit_code
    finally:
        reporter.send(f"ERROR 70 VstorError the daemon exited before it was ready (see {log_hint})")


if __name__ == "__main__":
    sys.exit(main())
