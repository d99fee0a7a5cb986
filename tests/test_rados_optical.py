"""Optical disc images of a pool on RADOS (issue 29): the sparse file area on its own
(store/backend/rados/sparse.py: only written stripes stored, indexed in the head's omap), and a
disc session written by one "host" read back, bytes and state, by another (another state
directory and another RADOS client, same rados:// location; in process), with the shelf
moves and library delete; and through FUSE, an ISO session written on host A read with isoinfo
on host B after ``array start --takeover`` (root). Needs the session's Ceph cluster (``make
test-rados``)."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import pytest
from cephlab import CLIENT_TIMEOUT, CephLab

from vstor.clock import ManualClock
from vstor.errors import MediaError
from vstor.media.manager import MediaManager, disc_files, media_files
from vstor.store.backend.location import open_backend
from vstor.store.backend.rados.files import FILE_STRIPE, stripe_name
from vstor.store.backend.stub import write_stub
from vstor.store.store import Store
from vstor.store.superblock import init_backend_pool

pytestmark = pytest.mark.rados
MiB = 1 << 20


@pytest.fixture
def location(rados_location: str) -> str:
    """rados_location (whose file areas and catalog namespaces go with it afterwards)."""
    return rados_location


def objects(area: object) -> list[str]:
    return sorted(o.key for o in area.io.list_objects())  # type: ignore[attr-defined]


def test_sparse_files_store_only_the_written_stripes(ceph_lab: CephLab, location: str) -> None:
    backend = open_backend(location, str(ceph_lab.conf), timeout=CLIENT_TIMEOUT)
    try:
        area = disc_files("/nonexistent", backend)  # the pool's sparse area "optical"
        assert area.kind == "rados" and area.describe("L/D.side0.img") == f"{location}/optical/L/D.side0.img"
        assert not area.exists("L/D.side0.img")
        with pytest.raises(FileNotFoundError):
            area.open("L/D.side0.img")
        f = area.open("L/D.side0.img", create=True)
        assert f.created and f.size() == 0 and f.pread(100, 0) == b""
        head, far = os.urandom(3 * MiB), os.urandom(MiB + 7)
        f.pwrite(head, 0)
        f.pwrite(far, 5 * FILE_STRIPE - 100)  # across the end of stripe 4 into stripe 5
        end = 5 * FILE_STRIPE - 100 + len(far)
        assert f.size() == end and f.pread(64, 5 * FILE_STRIPE - 100) == far[:64]  # reads see writes in flight
        f.sync()
        f.close()
        name = "L/D.side0.img"
        assert objects(area) == [stripe_name(name, k) for k in (0, 4, 5)]  # stripes 1-3: a hole, nothing stored
        assert area.size(name) == end and area.allocated(name) == 2 * FILE_STRIPE + (end - 5 * FILE_STRIPE)
        g = area.open(name)
        assert not g.created and g.size() == end
        want = head + bytes(5 * FILE_STRIPE - 100 - len(head)) + far
        assert g.pread(end + 100, 0) == want  # holes and the bytes past each object's end read as zeros
        g.truncate(2 * FILE_STRIPE + 5)  # cut: stripes 4 and 5 go, and the length is exact (stripe 2: a hole)
        g.close()
        assert area.size(name) == 2 * FILE_STRIPE + 5
        assert objects(area) == [stripe_name(name, k) for k in (0, 2)]
        assert area.open(name).pread(3 * FILE_STRIPE, 0) == want[: 2 * FILE_STRIPE + 5]
        area.makedirs("L/shelf")
        area.rename(name, "L/shelf/D.side0.img")
        assert area.listdir("L") == [] and area.listdir("L/shelf") == ["D.side0.img"]
        moved = area.open("L/shelf/D.side0.img")
        assert moved.size() == 2 * FILE_STRIPE + 5 and moved.pread(3 * FILE_STRIPE, 0) == want[: 2 * FILE_STRIPE + 5]
        moved.truncate(0)  # erase: nothing stored but the empty head
        moved.close()
        assert area.size("L/shelf/D.side0.img") == 0 and area.allocated("L/shelf/D.side0.img") == 0
        assert objects(area) == [stripe_name("L/shelf/D.side0.img", 0)]
        k = area.open("L/K.side0.img", create=True)
        area.set_keys("L/K.side0.img", [3])  # type: ignore[attr-defined]  # a crash between a key and its write
        k.close()
        k = area.open("L/K.side0.img")
        assert k.size() == 0 and k.pread(10, 0) == b""  # the indexed stripe that never came reads as nothing
        k.truncate(3 * FILE_STRIPE + 10)  # extend: the last stripe made, as a hole
        k.close()
        assert area.size("L/K.side0.img") == 3 * FILE_STRIPE + 10
        assert area.open("L/K.side0.img").pread(4 * FILE_STRIPE, 0) == bytes(3 * FILE_STRIPE + 10)
        area.remove_tree("L")
        assert objects(area) == [] and not area.exists("L/shelf/D.side0.img")
    finally:
        backend.close()


class Host:
    """One "host": its own state directory for the pool, its own RADOS client, and a store and
    media manager opened on them as the daemon opens them."""

    def __init__(self, base: Path, location: str, conf: str) -> None:
        self.dir = str(base / "state")
        write_stub(self.dir, location, conf, None)  # what 'pool init LOCATION --attach' leaves
        self.store = Store.open(self.dir, clock=ManualClock())
        self.media = MediaManager(self.dir, files=media_files(self.dir, self.store.backend), state=self.store.files)

    def local_discs(self) -> list[str]:
        """Disc images and side states under the state directory (there must be none)."""
        return sorted(glob.glob(f"{self.dir}/media/**/*.side*", recursive=True))

    def sides(self, barcode: str) -> list[dict]:
        return self.media.show("jb", barcode)["sides"]

    def close(self, sessions: bool = True) -> None:
        """``sessions`` False: the host dies with its drives' sessions open (nothing closed)."""
        if sessions:
            self.media.close()
        self.store.close()


def test_a_disc_session_on_one_host_reads_back_on_another(ceph_lab: CephLab, location: str,
                                                          tmp_path: Path) -> None:
    conf = str(ceph_lab.conf)
    with open_backend(location, conf, timeout=CLIENT_TIMEOUT) as backend:
        init_backend_pool(backend, segment_size=16 * MiB)
    a = Host(tmp_path / "hostA", location, conf)
    opened = [a]
    try:
        a.media.create_library("jb", "optical", 4, 2, 1)
        a.media.create_media("jb", ["DISC01"], type_="BD-R", capacity=64 * MiB)
        a.media.create_media("jb", ["MO0001"], type_="MO", capacity=16 * MiB)
        a.media.load("jb", "DISC01", 0)
        a.media.load("jb", "MO0001", 1)
        session = os.urandom(5 * MiB + 2048)  # two stripes
        disc = a.media.drive("jb", 0)
        assert disc.write(0, session) == len(session)
        disc.close_session()  # closing the drive file: the session is recorded
        later = os.urandom(4096)
        disc.write(len(session), later)  # a second session, never closed: the host dies with it open
        disc.file.sync()  # its bytes are in the cluster, past the recorded next writable address
        mo = a.media.drive("jb", 1)
        mo.write(12 * MiB, b"far out".ljust(4096, b"m"))  # rewritable: anywhere, a hole before it
        mo.close_session()
        assert a.local_discs() == []  # images and states are in the cluster
        opened.remove(a)
        a.close(sessions=False)
        b = Host(tmp_path / "hostB", location, conf)
        opened.append(b)
        (side,) = b.sides("DISC01")
        assert side["state"] == "appendable" and side["sessions"] == [[0, len(session)]]
        assert side["next_writable_address"] == len(session)  # the last closed session's state
        disc = b.media.drive("jb", 0)
        assert disc.read(0, len(session)) == session
        with pytest.raises(MediaError, match="next writable address"):
            disc.write(len(session) + 4096, b"x" * 2048)
        disc.write(len(session), b"y" * 2048)  # the next session overwrites the unrecorded bytes
        mo = b.media.drive("jb", 1)
        assert mo.read(12 * MiB, 7) == b"far out" and mo.read(0, 4096) == bytes(4096)
        used = {r["barcode"]: r["used"] for r in b.media.inventory("jb") if r["barcode"]}
        assert used["DISC01"] >= len(session) and used["MO0001"] <= FILE_STRIPE  # the MO's hole takes nothing
        b.media.unload("jb", 0)  # closes the session
        b.media.export("jb", "DISC01")
        b.media.import_("jb", "open")  # to the shelf: its image and state move in the cluster
        assert b.media.discs.listdir("jb/shelf") == ["DISC01.side0.img"]
        assert b.store.files.sub("media/jb/shelf").names() == ["DISC01.json", "DISC01.side0.json"]
        b.media.import_("jb", "close")
        assert b.media.discs.listdir("jb/shelf") == [] and "DISC01.side0.img" in b.media.discs.listdir("jb")
        (side,) = b.sides("DISC01")
        assert side["sessions"] == [[0, len(session)], [len(session), len(session) + 2048]]
        b.media.load("jb", "DISC01", 0)
        assert b.media.drive("jb", 0).read(0, len(session) + 2048) == session + b"y" * 2048
        assert json.loads(b.store.files.sub("media/jb").read("DISC01.side0.json") or b"")["nwa"] == len(session) + 2048
        b.media.unload("jb", 0)
        b.media.unload("jb", 1)
        b.media.delete_library("jb")
        assert b.media.discs.listdir("jb") == [] and b.store.files.sub("media/jb").names() == []
        assert b.local_discs() == []
    finally:
        for h in opened:
            h.close()



@pytest.mark.root
def test_a_disc_session_through_fuse_is_served_after_a_takeover(ceph_lab: CephLab, location: str, tmp_path: Path,
                                                                host2_client: str, short_dir: Path) -> None:
    """An ISO session written through host A's drive file; host B takes the pool over while A
    still runs (A is fenced) and serves the same disc: its state, and the ISO read by isoinfo."""
    import subprocess

    from harness import run
    from radoshosts import RadosHost
    conf = str(ceph_lab.conf)
    src = tmp_path / "s1"
    src.mkdir()
    (src / "one.txt").write_text("on a disc in rados\n")
    iso = tmp_path / "s1.iso"
    run(["genisoimage", "-quiet", "-R", "-o", str(iso), str(src)])
    a = RadosHost(short_dir / "A", location, conf, lock_seconds=6)
    b = None
    try:
        a.start()
        a.vstor("library", "create", "jb", "--type", "optical", "--slots", "2", "--drives", "1", "--mailslots", "1")
        a.vstor("media", "create", "jb", "DISC01", "--type", "BD-R", "--capacity", "64M")
        a.vstor("media", "load", "jb", "DISC01", "--drive", "0")
        fd = os.open(os.path.join(a.mnt, "media", "jb", "drive0"), os.O_WRONLY)
        try:
            os.pwrite(fd, iso.read_bytes(), 0)
        finally:
            os.close(fd)  # the session closes
        (side,) = json.loads(a.vstor("media", "show", "jb", "DISC01", "--json").stdout)["sides"]
        assert side["sessions"] == [[0, iso.stat().st_size]]
        b = RadosHost(short_dir / "B", location, conf, attach=True, ceph_id=host2_client, lock_seconds=6)
        b.start(args=["--takeover"])
        (side,) = json.loads(b.vstor("media", "show", "jb", "DISC01", "--json").stdout)["sides"]
        assert side["state"] == "appendable" and side["sessions"] == [[0, iso.stat().st_size]]
        dev = os.path.join(b.mnt, "media", "jb", "drive0")
        got = subprocess.run(["isoinfo", "-i", dev, "-R", "-x", "/one.txt"], capture_output=True, check=True).stdout
        assert got == b"on a disc in rados\n"
        assert not glob.glob(os.path.join(b.pool, "media", "**", "*.side*"), recursive=True)
        b.stop()
    finally:
        a.cleanup()
        if b is not None:
            b.cleanup()
