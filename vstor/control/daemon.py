"""The array daemon: one process per pool.

Start-up order: take the pool lock, open and recover the store, start maintenance and the
control socket, mount FUSE. The daemon reports "READY" (or "ERROR <exit> <type> <message>")
on the descriptor given by --ready-fd once the kernel has completed FUSE INIT, so
``vstor array start`` returns only when the images can be used.

Shutdown (``vstor array stop``, SIGTERM or SIGINT): the journal is synced, FUSE unmounted,
maintenance stopped, a final checkpoint written, and the lock released last.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading

from vstor.control.lock import PoolLock
from vstor.control.mounts import fsname_for, prepare_mountpoint, unmount
from vstor.control.poolfiles import pool_log_handler
from vstor.control.pygc import GcPolicy
from vstor.control.server import ControlServer
from vstor.control.service import PoolService
from vstor.errors import VstorError
from vstor.faults import Faults
from vstor.fuse.options import after_init, mount_options, set_io_flusher
from vstor.media.manager import MediaManager
from vstor.replication.manager import Replication
from vstor.store.reclaim import Reclaimer
from vstor.store.store import Store
from vstor.store.superblock import layout

log = logging.getLogger("vstor.daemon")


def setup_logging(pool: str, foreground: bool) -> None:
    handlers: list[logging.Handler] = [pool_log_handler(pool)]  # log/daemon.log, owner only
    if foreground:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")


class Reporter:
    """Writes the one-line start-up outcome to the parent, once."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, line: str) -> None:
        with self.lock:
            if self.fd is None:
                return
            try:
                os.write(self.fd, (line + "\n").encode())
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


def run(pool: str, mount: str, key_file: str | None, reporter: Reporter, threads: bool = True,
        repl: dict | None = None) -> int:
    from vstor.fuse.media_fs import MediaFS
    from vstor.fuse.ops import VolumeFS, serve
    from vstor.fuse.ops import fuse as mfuse

    lock = PoolLock(pool)
    lock.acquire("daemon")
    store = None
    replication = None
    try:
        io_flusher = set_io_flusher()
        faults = Faults.from_env()
        store = Store.open(pool, key_file, faults=faults)
        reclaimer = Reclaimer(store)
        reclaimer.start()
        gcpolicy = GcPolicy()  # freezes the maps just loaded out of the cyclic collector's walk
        gcpolicy.start()
        mount = os.path.abspath(mount)
        prepare_mountpoint(mount, pool)
        fs = VolumeFS(store, on_ready=lambda conn: after_init(mount, lambda: reporter.send("READY")),
                      extra_stats=lambda: {"daemon": {"pid": os.getpid(), "io_flusher": io_flusher,
                                                     "py_gc": gcpolicy.stats()}})
        reclaimer.snapshots_in_use = fs.snapshots_in_use  # policy pruning skips snapshots in use
        media = MediaManager(store.pool, store.media_key)
        fs.media = MediaFS(media, mfuse.FuseOSError)
        service = PoolService(store, mount, fs, reclaimer)
        service.stop_requested = lambda: threading.Thread(target=_unmount_quietly, args=(mount,)).start()
        replication = Replication(store, faults=faults, **(repl or {}))
        replication.start()
        service.replication = replication
        service.media = media
        server = ControlServer(layout(pool)["socket"], service)
        server.start()
        log.info("serving pool %s at %s (pid %d, io_flusher=%s)", pool, mount, os.getpid(), io_flusher)
        try:
            serve(fs, mount, mount_options(fsname_for(pool), threads))
        except RuntimeError as e:  # libfuse's non-zero return, e.g. after SIGTERM/SIGINT
            log.info("FUSE loop ended with status %s (signal or unmount)", e)
        finally:
            server.stop()
            replication.stop()
            media.close()
            reclaimer.stop()
            gcpolicy.stop()
        log.info("unmounted %s; closing the store", mount)
        return 0
    finally:
        if store is not None:
            store.close(checkpoint=not store.journal.failed)
        lock.release()
        log.info("stopped")


def _unmount_quietly(mount: str) -> None:
    try:
        unmount(mount)
    except VstorError as e:
        log.error("unmount failed: %s", e)


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
    a = p.parse_args(argv)
    repl = {"listen": a.listen, "tls_dir": a.tls_dir, "name": a.name}
    setup_logging(a.pool, a.foreground)
    reporter = Reporter(a.ready_fd)
    try:
        return run(a.pool, a.mount, a.key_file, reporter, threads=not a.single_thread, repl=repl)
    except VstorError as e:
        log.error("%s", e)
        reporter.send(f"ERROR {e.exit_code} {type(e).__name__} {e.message}")
        if a.foreground:
            print(f"vstor: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        log.exception("daemon failed")
        reporter.send(f"ERROR 70 VstorError internal error: {e} (see the pool's log/daemon.log)")
        return 70
    finally:
        reporter.send("ERROR 70 VstorError the daemon exited before it was ready (see log/daemon.log)")


if __name__ == "__main__":
    sys.exit(main())
