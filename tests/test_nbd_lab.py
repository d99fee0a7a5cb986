"""The NBD test-host lab (vm/nbdhost.py): ext4 through nbdfuse and a loop device, from a test host's
network namespace over TCP to an array's --nbd in another namespace.

The crash test: files written with fsync through the whole chain (ext4 -> loop -> nbdfuse -> NBD
FLUSH -> vstor's journal), then kill -9 of the daemon, a restart, a fresh attachment: e2fsck -fn is
clean and every fsynced file is there. The nbdkit test checks the lab tool itself, plain and over
TLS (nbdkit's nbd plugin as nbdfuse's helper), against the reference server.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from harness import Array, run

from vm.lab import Lab
from vm.nbdhost import Attachment, attach, detach

PORT = 10809  # inside the test's own namespaces: no other test can hold it


def _write_synced(mnt: str, count: int, tag: str) -> dict[str, str]:
    """``count`` files of 64 KiB, each fsynced, then the directory; their digests."""
    out = {}
    for i in range(count):
        data = os.urandom(64 << 10)
        path = os.path.join(mnt, f"{tag}-{i}.bin")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        out[path] = hashlib.sha256(data).hexdigest()
    dfd = os.open(mnt, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return out


def _digests(paths: dict[str, str]) -> dict[str, str]:
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


@pytest.mark.root
def test_ext4_over_nbd_survives_daemon_kill9_and_restart(tmp_path):
    lab = Lab(f"n{uuid.uuid4().hex[:6]}")
    arr: Array | None = None
    atts: list[Attachment] = []
    try:
        lab.up()
        arr = Array(tmp_path / "array")
        arr.netns = lab.ns("b")
        arr.start_args = ["--nbd", f"{lab.address('b')}:{PORT}"]
        arr.start()
        arr.create("data", "64M")
        arr.vstor("volume", "export", "data")
        uri = f"nbd://{lab.address('b')}:{PORT}/data"

        host = tmp_path / "host"
        atts.append(att := attach(uri, host, netns=lab.ns("a"), mkfs=True))
        files = _write_synced(att.mount, 8, "before")
        files |= _write_synced(att.mount, 4, "more")

        arr.kill9()
        detach(att)  # the server is gone: the unmount fails its writes, the attachment must still go
        assert not os.path.ismount(host / "mnt") and not os.path.ismount(host / "fuse")

        arr.start()  # journal replay; the export is remembered
        atts.append(att := attach(uri, host, netns=lab.ns("a"), mount=False))
        fsck = subprocess.run(["e2fsck", "-fn", att.loop], capture_output=True, text=True, timeout=120)
        assert fsck.returncode == 0, f"e2fsck after kill -9:\n{fsck.stdout}\n{fsck.stderr}"
        mnt = tmp_path / "check"
        mnt.mkdir()
        run(["mount", "-o", "ro", att.loop, str(mnt)])
        try:
            got = _digests({str(mnt / Path(p).name): d for p, d in files.items()})
        finally:
            run(["umount", str(mnt)])
        assert got == {str(mnt / Path(p).name): d for p, d in files.items()}
    finally:
        for a in reversed(atts):
            detach(a)
        if arr is not None:
            arr.cleanup()
        lab.down()
    assert not any(str(tmp_path) in line for line in Path("/proc/mounts").read_text().splitlines())


@pytest.mark.root
def test_nbdhost_attaches_nbdkit_plain_and_over_tls(tmp_path):
    """The lab tool against the reference server: ext4 made and read back, plain and with TLS required;
    a plain attach of the TLS-only server fails and leaves nothing behind."""
    from vstor.replication.pki import init_ca, issue

    pki, server, client = tmp_path / "pki", tmp_path / "server", tmp_path / "client"
    init_ca(str(pki))
    for cn, d, role in (("nbd-srv", server, "server"), ("nbd-cli", client, "client")):
        issue(str(pki), cn)
        d.mkdir()
        (d / "ca-cert.pem").write_bytes((pki / "ca.pem").read_bytes())
        (d / f"{role}-cert.pem").write_bytes((pki / f"{cn}.pem").read_bytes())
        (d / f"{role}-key.pem").write_bytes((pki / f"{cn}.key").read_bytes())
    lab = Lab(f"n{uuid.uuid4().hex[:6]}")
    procs: list[subprocess.Popen] = []
    atts: list[Attachment] = []
    try:
        lab.up()
        addr = lab.address("b")
        for port, tls in ((PORT, []), (PORT + 1, ["--tls=require", f"--tls-certificates={server}"])):
            img = tmp_path / f"disk{port}.img"
            img.write_bytes(b"")
            os.truncate(img, 32 << 20)
            pidfile = tmp_path / f"nbdkit{port}.pid"
            procs.append(subprocess.Popen(lab.command("b", ["nbdkit", "-f", "-P", str(pidfile), "-i", addr,
                                                            "-p", str(port), *tls, "file", str(img)])))
            while not (pidfile.exists() and pidfile.stat().st_size):
                assert procs[-1].poll() is None, "nbdkit did not start"
                time.sleep(0.02)
        with pytest.raises(RuntimeError, match="nbdfuse"):
            attach(f"nbd://{addr}:{PORT + 1}/", tmp_path / "refused", netns=lab.ns("a"))
        assert not os.path.ismount(tmp_path / "refused" / "fuse")
        for port, kw in ((PORT, {}), (PORT + 1, {"tls_dir": str(client), "server_name": "nbd-srv"})):
            scheme = "nbds" if kw else "nbd"
            atts.append(att := attach(f"{scheme}://{addr}:{port}/", tmp_path / f"h{port}", netns=lab.ns("a"),
                                      mkfs=True, **kw))
            files = _write_synced(att.mount, 2, "x")
            detach(att)
            atts.append(att := attach(f"{scheme}://{addr}:{port}/", tmp_path / f"h{port}", netns=lab.ns("a"),
                                      read_only=True, **kw))
            assert _digests(files) == files
            detach(att)
    finally:
        for a in reversed(atts):
            detach(a)
        for p in procs:
            p.terminate()
            p.wait(10)
        lab.down()
    assert not any(str(tmp_path) in line for line in Path("/proc/mounts").read_text().splitlines())
