"""Shared set-up of the backup client tests: a pool with an engine and an emulated tape library
(no FUSE), a CA with certificates for the array and its clients, the client listener on an
ephemeral loopback port, and client trees with every kind of entry."""

from __future__ import annotations

import os
import random
import socket
import stat

from poolkit import MiB, make_pool

from vstor.backup.engine import BackupEngine
from vstor.clock import ManualClock
from vstor.faults import Faults
from vstor.media.manager import MediaManager
from vstor.replication import pki
from vstor.store.store import Store

ODD = ["new\nline", "ünïcödé-名前", "sp ace", "-dash", "#hash", "quote'\"", "tab\tname"]
ODD_BYTES = [b"latin1-\xe9\xff", b"bad-\x80\x81utf8"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    def __init__(self, tmp_path, capacity: int = 256 * MiB, carts: int = 4, clients: tuple[str, ...] = ("c1",),
                 encrypt: bool = False):
        self.tmp = tmp_path
        self.pool = make_pool(tmp_path, encrypt=encrypt)  # encrypted: policies may --encrypt their tapes
        self.clock = ManualClock()
        self.store = Store.open(self.pool, str(tmp_path / "key") if encrypt else None, clock=self.clock)
        self.media = MediaManager(self.pool, self.store.media_key)
        self.media.create_library("lib", "tape", carts + 2, 2, 1)
        self.barcodes = [f"VC{i:04d}L9" for i in range(1, carts + 1)]
        self.media.create_media("lib", self.barcodes, capacity=capacity)
        self.faults = Faults()
        self.engine = BackupEngine(self.store, self.media, clock=self.clock, faults=self.faults)
        self.clients = self.engine.clients
        self.tls = str(tmp_path / "tls")
        pki.init_ca(self.tls)
        for name in ("array", *clients):
            pki.issue(self.tls, name)
        self.address = self.clients.listen(f"127.0.0.1:{free_port()}", self.tls, "array")

    def policy(self, name: str = "p", client: str = "c1", **kw: object) -> dict:
        args = {"name": name, "source": f"client:{client}", "library": "lib", "media": self.barcodes,
                "retention": "7d"} | kw
        return self.engine.create_policy(**args)

    def close(self) -> None:
        self.engine.close()
        self.media.close()
        self.store.close()


def make_tree(root: str, files: int = 2000, seed: int = 1) -> str:
    """A client tree: ``files`` small files in nested directories, odd names, hard and symbolic
    links, sparse files, an empty file and a larger one."""
    rng = random.Random(seed)
    os.makedirs(root)
    dirs = [root]
    for i in range(40):
        d = os.path.join(rng.choice(dirs), f"d{i}")
        os.makedirs(d)
        dirs.append(d)
    for i in range(files):
        with open(os.path.join(rng.choice(dirs), f"f{i}.txt"), "wb") as f:
            f.write(rng.randbytes(rng.randrange(0, 3000)))
    for name in ODD:
        with open(os.path.join(root, name), "w") as f:
            f.write(name * 3)
    for raw in ODD_BYTES:
        with open(os.path.join(os.fsencode(root), raw), "wb") as f:
            f.write(raw * 7)
    big = os.path.join(root, "big.bin")
    with open(big, "wb") as f:
        f.write(rng.randbytes(3 * MiB + 123))
    sparse = os.path.join(root, "sparse.img")
    with open(sparse, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(8 * MiB)
        f.write(rng.randbytes(100_000))
        f.seek(40 * MiB)
        f.write(b"tail" * 1000)
    with open(os.path.join(root, "holes-only"), "wb") as f:
        f.truncate(5 * MiB)
    open(os.path.join(root, "empty"), "wb").close()
    os.link(big, os.path.join(root, "d0", "big-hardlink"))
    os.link(os.path.join(root, ODD[0]), os.path.join(root, "hard-to-odd"))
    os.symlink("big.bin", os.path.join(root, "link-rel"))
    os.symlink("/nonexistent/target", os.path.join(root, "link-dangling"))
    os.symlink("d0", os.path.join(root, "link-dir"))
    os.chmod(os.path.join(root, "empty"), 0o4750)
    os.utime(big, ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    return root


def snapshot(root: str) -> dict[bytes, tuple]:
    """Everything a restore must bring back, per relative path (bytes)."""
    out = {}
    broot = os.fsencode(root)
    for d, dnames, fnames in os.walk(broot):
        for n in dnames + fnames:
            p = os.path.join(d, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, broot)
            kind = stat.S_IFMT(st.st_mode)
            info = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            if stat.S_ISLNK(st.st_mode):
                info += (os.readlink(p), st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    info += (st.st_size, f.read(), st.st_mtime_ns, st.st_nlink)
            out[rel] = info
    return out


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512
