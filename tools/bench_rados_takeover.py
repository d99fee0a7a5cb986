"""RADOS takeover time after kill -9 (issue 29): how soon another host serves a pool whose daemon died.

    sudo .venv-rados/bin/python -m tools.bench_rados_takeover [--rounds 3] [--mib 256]
        [--ceph-conf FILE --ceph-pool POOL] [--lock-seconds 30]

Each measurement uses a fresh rados://POOL/PREFIX. Host A (its own state directory and RADOS
client) starts the array, writes --mib MiB to a volume through FUSE in 1 MiB writes and
fsyncs (journal records the next owner replays), and is killed with SIGKILL. Host B (another
state directory, another client) then serves the pool, one of two ways:

* expiry: B waits for A's lock to expire (its expiration as ``rados lock info`` gives it),
  runs ``vstor array start`` (again every 0.1 s while it is refused), and reads the first
  4 KiB of the volume through its FUSE mount with O_DIRECT. Reported: the wait from the kill
  to the expiry, and the time from the expiry to that first served read.
* takeover: B runs ``vstor array start --takeover`` at once (blocklist A's client, break its
  lock, replay the journal). Reported: from the command to the first served read.

Without --ceph-conf it brings up a one-node memstore cluster under --workdir
(tests/cephlab.py) and removes it afterwards. Needs root (FUSE) and python3-rados (.venv-rados).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tools.benchlib.options import add_common
from tools.benchlib.procs import BenchError, run, wait_until
from tools.benchlib.report import table
from tools.benchlib.timing import Timer

MiB = 1 << 20
VOLUME = "v"
RETRY = 0.1  # seconds between start attempts while the lock is still held


class Host:
    """One "host" of the pool: a state directory, a mount point, and the vstor CLI run with them."""

    def __init__(self, base: Path, name: str, location: str, conf: str) -> None:
        self.mnt = base / name / "mnt"
        self.state = base / name / "state"
        self.mnt.mkdir(parents=True)
        self.location = location
        self.env = dict(os.environ, VSTOR_POOL=location, VSTOR_CEPH_CONF=conf, VSTOR_RADOS_STATE_DIR=str(self.state))

    def vstor(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([sys.executable, "-m", "vstor.cli.main", *args], capture_output=True, text=True,
                             env=self.env, timeout=600)
        if check and res.returncode:
            raise BenchError(f"vstor {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def start(self, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.vstor("array", "start", "--mount", str(self.mnt), *extra, check=check)

    @property
    def image(self) -> str:
        return str(self.mnt / "volumes" / VOLUME)

    def pid(self) -> int | None:
        """The daemon's pid (it holds the state directory's pool lock), or None."""
        from vstor.control.host.lock import daemon_pid
        from vstor.store.backend.location import parse_rados
        loc = parse_rados(self.location)
        return daemon_pid(str(self.state / loc.pool / loc.prefix))  # stub.state_dir on this host

    def cleanup(self) -> None:
        pid = self.pid()
        if pid and pid > 0:
            self.vstor("array", "stop", "--timeout", "30", check=False)
            pid = self.pid()
            if pid and pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True)


def first_read(image: str, want: bytes) -> None:
    """Read the first block with O_DIRECT (from the daemon, not the page cache) and check it."""
    fd = os.open(image, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, len(want))
    try:
        n = os.preadv(fd, [buf], 0)
        if buf[:n] != want:
            raise BenchError("the first served read returned other bytes than were written")
    finally:
        buf.close()
        os.close(fd)


def lock_expiry(conf: str, location: str) -> float | None:
    """The wall-clock time at which the pool's lock expires, from ``rados lock info``."""
    from vstor.store.backend.location import parse_rados
    from vstor.store.backend.rados.lock import LOCK_NAME, LOCK_OBJECT
    loc = parse_rados(location)
    res = run(["rados", "-c", conf, "-p", loc.pool, "-N", loc.prefix, "lock", "info", LOCK_OBJECT, LOCK_NAME,
               "--format", "json"], check=False)
    with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
        stamp = json.loads(res.stdout)["lockers"][0]["expiration"]
        return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    return None


def crash_owner(base: Path, conf: str, pool: str, mib: int) -> tuple[Host, str, bytes, float]:
    """A fresh pool served by host A, written and fsynced, then A killed: (A, location, first block, kill time)."""
    location = f"rados://{pool}/takeover-{uuid.uuid4().hex[:10]}"
    a = Host(base, "a-" + location.rsplit("-", 1)[1], location, conf)
    a.vstor("pool", "init", location, "--segment-size", "64M")
    a.start()
    a.vstor("volume", "create", VOLUME, "--size", f"{max(mib, 16)}M")
    block = os.urandom(MiB)
    fd = os.open(a.image, os.O_WRONLY)
    try:
        for i in range(mib):
            os.pwrite(fd, block if i == 0 else os.urandom(MiB), i * MiB)
        os.fsync(fd)
    finally:
        os.close(fd)
    pid = a.pid()
    if not pid or pid < 0:
        raise BenchError("host A's daemon is not running")
    os.kill(pid, 9)
    killed = time.time()
    wait_until(lambda: not Path(f"/proc/{pid}").exists()
               or Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] == "Z", 30)
    subprocess.run(["fusermount3", "-uz", str(a.mnt)], capture_output=True)
    return a, location, block[:4096], killed


def measure(base: Path, conf: str, pool: str, mib: int, how: str) -> dict:
    a, location, want, killed = crash_owner(base, conf, pool, mib)
    b = Host(base, "b-" + location.rsplit("-", 1)[1], location, conf)
    try:
        b.vstor("pool", "init", location, "--attach")
        out: dict = {"how": how}
        if how == "takeover":
            with Timer() as t:
                b.start("--takeover")
                first_read(b.image, want)
            out["serve_s"] = round(t.seconds, 2)
            out["after_kill_s"] = round(time.time() - killed, 2)
        else:
            expiry = lock_expiry(conf, location)
            out["expiry_known"] = expiry is not None
            expiry = expiry if expiry is not None else killed + float(os.environ.get("VSTOR_RADOS_LOCK_SECONDS", 30))
            time.sleep(max(0.0, expiry - time.time()))
            while b.start(check=False).returncode:
                time.sleep(RETRY)
            first_read(b.image, want)
            out["wait_s"] = round(expiry - killed, 2)
            out["serve_s"] = round(time.time() - expiry, 2)
            out["after_kill_s"] = round(time.time() - killed, 2)
        rec = json.loads(b.vstor("array", "status", "--json").stdout)["recovery"]
        out["replayed_records"], out["replayed_mib"] = rec.get("records", 0), round(rec.get("bytes", 0) / MiB, 1)
        return out
    finally:
        b.cleanup()
        a.cleanup()
        remove_objects(conf, location)


def remove_objects(conf: str, location: str) -> None:
    import rados

    from vstor.store.backend.location import parse_rados
    loc = parse_rados(location)
    cluster = rados.Rados(conffile=conf)
    cluster.connect(timeout=30)
    try:
        with cluster.open_ioctx(loc.pool) as io:  # every namespace under the prefix (journal, media, ...)
            io.set_namespace(rados.LIBRADOS_ALL_NSPACES)
            mine = [(o.nspace, o.key) for o in io.list_objects()
                    if o.nspace == loc.prefix or o.nspace.startswith(loc.prefix + "/")]
            for ns, key in mine:
                io.set_namespace(ns)
                io.remove_object(key)
    finally:
        cluster.shutdown()


@contextlib.contextmanager
def cluster(args: argparse.Namespace, base: Path):  # noqa: ANN201
    """(ceph.conf, pool): the one given, or a throwaway memstore cluster."""
    if args.ceph_conf:
        yield args.ceph_conf, args.ceph_pool
        return
    from tests.cephlab import CephLab, ceph_available
    why = ceph_available()
    if why:
        raise BenchError(why)
    lab = CephLab(base / "ceph")
    try:
        lab.up()
        yield str(lab.conf), lab.pool("takeover")
    finally:
        lab.down()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="measurements of each way (default 3)")
    p.add_argument("--mib", type=int, default=256, help="MiB host A writes before it is killed (default 256)")
    p.add_argument("--ways", default="expiry,takeover", help="which ways to measure: expiry, takeover or both")
    p.add_argument("--lock-seconds", type=int, help="the RADOS lock's duration (VSTOR_RADOS_LOCK_SECONDS; "
                   "default: vstor's, 30)")
    p.add_argument("--ceph-conf", help="an existing cluster's ceph.conf (default: bring up a memstore one)")
    p.add_argument("--ceph-pool", default="rbd", help="the Ceph pool to use with --ceph-conf (default rbd)")
    add_common(p, page_reporting=False)
    a = p.parse_args()
    ways = [w for w in a.ways.split(",") if w]
    if not ways or any(w not in ("expiry", "takeover") for w in ways):
        p.error("--ways: choose from expiry, takeover")
    if a.rounds < 1 or a.mib < 1:
        p.error("--rounds and --mib must be at least 1")
    if a.lock_seconds:
        os.environ["VSTOR_RADOS_LOCK_SECONDS"] = str(a.lock_seconds)
    print("$ " + " ".join([os.path.relpath(sys.executable), *sys.orig_argv[1:]]), flush=True)
    base = Path(tempfile.mkdtemp(prefix="vstor-takeover-", dir=a.workdir))
    results: list[dict] = []
    try:
        with cluster(a, base) as (conf, pool):
            for r in range(a.rounds):
                for how in ways:
                    res = measure(base, conf, pool, a.mib, how) | {"round": r + 1}
                    results.append(res)
                    print(json.dumps(res), flush=True)
    finally:
        subprocess.run(["rm", "-rf", str(base)], capture_output=True)
    rows = []
    for how in ways:
        mine = [x for x in results if x["how"] == how]
        serve = [x["serve_s"] for x in mine]
        rows.append([how, str(len(mine)), f"{statistics.median([x.get('wait_s', 0.0) for x in mine]):.2f}",
                     f"{statistics.median(serve):.2f}", f"{min(serve):.2f}-{max(serve):.2f}",
                     f"{statistics.median([x['after_kill_s'] for x in mine]):.2f}",
                     f"{statistics.median([x['replayed_mib'] for x in mine]):.0f}"])
    print(table(["way", "runs", "kill->expiry s", "to first read s (median)", "range", "kill->read s",
                 "replayed MiB"], rows))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
