"""A test host attaching an NBD export (vstor's, or any server's) with nbdfuse and a loop device.

    python -m vm.nbdhost attach URI DIR [--netns NS | --tag T --site a] [--tls-dir D [--server-name N]]
                                        [--mkfs] [--no-mount] [--read-only]
    python -m vm.nbdhost detach DIR

This kernel has no nbd module, so a test host attaches the way the admin guide shows for such hosts:
``nbdfuse DIR/fuse URI`` exposes the export as the file ``DIR/fuse/nbd``, ``losetup -f --show`` puts a
block device over it, and ext4 is made (--mkfs) and mounted at ``DIR/mnt``. nbdfuse runs in the test
host's network namespace (``nsenter --net``, never ``ip netns exec``): the FUSE mount, the loop device
and the ext4 mount are in the host's mount namespace, so they are visible (and torn down) from here.
With --tls-dir (a libnbd client directory: ca-cert.pem, client-cert.pem, client-key.pem) nbdfuse runs
``nbdkit nbd ... tls=require tls-certificates=DIR`` as its socket-activated helper, since nbdfuse 1.14
refuses ``?tls-certificates=`` in its URI; --server-name is the name the server's certificate holds,
mapped to the URI's address by an /etc/hosts overlay in that helper's private mount namespace.
``DIR/attach.json`` records what was made; ``detach`` undoes it in reverse (unmount, ``losetup -d``,
``fusermount3 -u``, end nbdfuse), also for a half-made attachment or after the server died.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["Attachment", "attach", "detach", "main", "netns_command"]

START_TIMEOUT = 30.0
STATE = "attach.json"


def netns_command(netns: str | None, argv: list[str]) -> list[str]:
    """argv in network namespace ``netns`` only (None: this one); mounts stay the host's."""
    return ["nsenter", f"--net=/run/netns/{netns}", *argv] if netns else list(argv)


@dataclass
class Attachment:
    dir: str
    uri: str
    netns: str | None = None
    pid: int | None = None  # nbdfuse's
    loop: str | None = None
    mount: str | None = None
    steps: list[str] = field(default_factory=list)  # what was made, for detach

    @property
    def fuse(self) -> str:
        return os.path.join(self.dir, "fuse")

    @property
    def file(self) -> str:
        return os.path.join(self.fuse, "nbd")

    def save(self) -> None:
        Path(self.dir, STATE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str) -> Attachment:
        return cls(**json.loads(Path(directory, STATE).read_text()))


def _run(cmd: list[str], timeout: float = 60) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({r.returncode}): {(r.stderr or r.stdout).strip()}")
    return r.stdout


def _mounted(path: str) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def _tls_helper(uri: str, tls_dir: str, server_name: str | None, workdir: str) -> list[str]:
    """The '[ CMD ]' nbdfuse runs instead of dialing URI itself: nbdkit's nbd plugin doing the TLS."""
    u = urllib.parse.urlsplit(uri)
    host = server_name or u.hostname or ""
    nbdkit = ["nbdkit", "--exit-with-parent", "nbd", f"hostname={host}", f"port={u.port or 10809}",
              f"export={urllib.parse.unquote(u.path[1:])}", "tls=require", f"tls-certificates={tls_dir}"]
    if not server_name:
        return ["[", *nbdkit, "]"]
    etc = Path(workdir, "etc")
    etc.mkdir(exist_ok=True)
    (etc / "hosts").write_text(Path("/etc/hosts").read_text() + f"\n{u.hostname} {server_name}\n")
    inner = f"mount -t overlay overlay -o lowerdir={shlex.quote(f'{etc}:/etc')} /etc && exec {shlex.join(nbdkit)}"
    return ["[", "unshare", "--mount", "sh", "-c", inner, "]"]


def attach(uri: str, directory: str | os.PathLike[str], netns: str | None = None, tls_dir: str | None = None,
           server_name: str | None = None, mkfs: bool = False, mount: bool = True,
           read_only: bool = False, loop: bool = True) -> Attachment:
    """nbdfuse + losetup (+ mkfs.ext4) + mount; on any failure everything made is undone. With
    loop=False it stops at nbdfuse's file (``Attachment.file``): writes to it reach the server before
    they return (FUSE writes through), where a loop device's page cache would hold them back."""
    if not loop and (mkfs or mount):
        raise ValueError("mkfs and mount need the loop device")
    d = os.path.abspath(directory)
    os.makedirs(d, exist_ok=True)
    att = Attachment(d, uri, netns)
    try:
        os.makedirs(att.fuse, exist_ok=True)
        pidfile, log = os.path.join(d, "nbdfuse.pid"), os.path.join(d, "nbdfuse.log")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)
        target = _tls_helper(uri, tls_dir, server_name, d) if tls_dir else [uri]
        cmd = ["nbdfuse", "-P", pidfile, *(["-r"] if read_only else []), att.fuse, *target]
        with open(log, "ab") as out:
            proc = subprocess.Popen(netns_command(netns, cmd), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        att.pid = proc.pid  # nsenter execs nbdfuse: the same process
        att.steps.append("nbdfuse")
        att.save()
        deadline = time.monotonic() + START_TIMEOUT
        while not (os.path.exists(pidfile) and os.path.getsize(pidfile)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nbdfuse {uri} did not start: {Path(log).read_text(errors='replace').strip()}")
            time.sleep(0.02)
        if not loop:
            return att
        att.loop = _run(["losetup", "-f", "--show", *(["-r"] if read_only else []), att.file]).strip()
        att.steps.append("loop")
        att.save()
        if mkfs:
            _run(["mkfs.ext4", "-q", "-F", att.loop], timeout=120)
        if mount:
            att.mount = os.path.join(d, "mnt")
            os.makedirs(att.mount, exist_ok=True)
            _run(["mount", *(["-o", "ro"] if read_only else []), att.loop, att.mount])
            att.steps.append("mount")
            att.save()
    except BaseException:
        detach(att)
        raise
    return att


def detach(att: Attachment | str, timeout: float = 30.0) -> None:
    """Undo an attachment (or the one recorded in directory ``att``), whatever state it is in."""
    if isinstance(att, str):
        try:
            att = Attachment.load(att)
        except FileNotFoundError:
            return
    if "mount" in att.steps and att.mount and _mounted(att.mount):
        if subprocess.run(["umount", att.mount], capture_output=True, timeout=timeout).returncode:
            subprocess.run(["umount", "-l", att.mount], capture_output=True)
    if "loop" in att.steps and att.loop:
        subprocess.run(["losetup", "-d", att.loop], capture_output=True)
    if "nbdfuse" in att.steps:
        deadline = time.monotonic() + timeout
        while _mounted(att.fuse) and time.monotonic() < deadline:
            # busy while the loop device lets go of the file; a dead server makes nbdfuse slow to answer
            if subprocess.run(["fusermount3", "-u", att.fuse], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        if _mounted(att.fuse):
            subprocess.run(["fusermount3", "-uz", att.fuse], capture_output=True)
        _end(att.pid, timeout)
    att.steps.clear()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(att.dir, STATE))


def _end(pid: int | None, timeout: float) -> None:
    """nbdfuse exits once unmounted; SIGTERM then SIGKILL if it does not (it is our child or not)."""
    if not pid:
        return
    for sig in (0, signal.SIGTERM, signal.SIGKILL):
        if sig:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (timeout if sig == 0 else 5)
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vm.nbdhost", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True)
    a = sub.add_parser("attach", help="nbdfuse + losetup (+ mkfs.ext4) + mount; prints the attachment as JSON")
    a.add_argument("uri", help="nbd://ADDR:PORT/EXPORT (nbds:// with --tls-dir)")
    a.add_argument("dir", help="working directory: DIR/fuse (nbdfuse), DIR/mnt (ext4), DIR/attach.json")
    a.add_argument("--netns", help="network namespace of the test host (default: this one)")
    a.add_argument("--tag", help="with --site: the lab (vm/lab.py) whose site is the test host")
    a.add_argument("--site", choices=("a", "b"), help="with --tag: the site")
    a.add_argument("--tls-dir", help="libnbd client directory: ca-cert.pem, client-cert.pem, client-key.pem")
    a.add_argument("--server-name", help="with --tls-dir: the name in the server's certificate")
    a.add_argument("--mkfs", action="store_true", help="make ext4 on the device first (destroys its data)")
    a.add_argument("--no-mount", action="store_true", help="stop at the loop device")
    a.add_argument("--no-loop", action="store_true", help="stop at nbdfuse's file DIR/fuse/nbd (no loop device)")
    a.add_argument("--read-only", action="store_true", help="attach read-only (nbdfuse -r, losetup -r, mount -o ro)")
    d = sub.add_parser("detach", help="unmount, losetup -d, fusermount3 -u, end nbdfuse")
    d.add_argument("dir", help="the directory given to attach")
    args = p.parse_args(argv)
    try:
        if args.action == "detach":
            detach(os.path.abspath(args.dir))
            return 0
        netns = args.netns
        if args.tag or args.site:
            if not (args.tag and args.site) or netns:
                p.error("give --tag and --site together, or --netns")
            from vm.lab import Lab

            netns = Lab(args.tag).ns(args.site)
        if args.no_loop and (args.mkfs or not args.no_mount):
            p.error("--no-loop needs --no-mount and no --mkfs")
        att = attach(args.uri, args.dir, netns, args.tls_dir, args.server_name, args.mkfs, not args.no_mount,
                     args.read_only, not args.no_loop)
        print(json.dumps(asdict(att), indent=2))
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        print(f"vm.nbdhost: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
