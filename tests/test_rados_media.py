"""Cartridges and the backup catalog of a pool on RADOS (issue 29): the striped file area
(store/backend/rados/files.py) on its own, a backup job written to tape on one "host" and
listed and restored byte for byte on another (another state directory, same rados://
location; in process), and a tar written through FUSE to a drive file read back after the
daemon moved to the other host (root). Needs the session's Ceph cluster (``make test-rados``).

The library files (``media/LIB.json``) are pool state files (store/backend/statefiles.py):
the second host reads them, the cartridges and the catalog from the cluster; its state
directory holds nothing of the first host's."""

from __future__ import annotations

import glob
import os
import uuid
from pathlib import Path

import pytest
from cephlab import CLIENT_TIMEOUT, CephLab

from vstor.backup.engine import BackupEngine
from vstor.clock import ManualClock
from vstor.media.manager import MediaManager, media_files
from vstor.store.backend.location import open_backend
from vstor.store.backend.rados.files import FILE_STRIPE, stripe_name
from vstor.store.backend.stub import write_stub
from vstor.store.store import Store
from vstor.store.superblock import init_backend_pool

pytestmark = pytest.mark.rados
MiB = 1 << 20
RECORD = 256 * 1024


@pytest.fixture
def location(rados_location: str) -> str:
    """rados_location (whose file areas and catalog namespaces go with it afterwards)."""
    return rados_location


def test_striped_files_keep_a_prefix_and_read_back(ceph_lab: CephLab, location: str) -> None:
    backend = open_backend(location, str(ceph_lab.conf), timeout=CLIENT_TIMEOUT)
    try:
        area = backend.file_area("media", "/nonexistent")
        assert area.kind == "rados" and not area.exists("L/A.tape")
        with pytest.raises(FileNotFoundError):
            area.open("L/A.tape")
        f = area.open("L/A.tape", create=True)
        assert f.created and f.size() == 0
        blocks = [os.urandom(RECORD + 64) for _ in range(40)]  # 10 MiB: three stripes, writes across their ends
        pos = 0
        for b in blocks:
            f.pwrite(b, pos)
            pos += len(b)
        assert f.size() == pos and f.pread(64, RECORD + 64) == blocks[1][:64]  # reads see writes in flight
        f.sync()
        f.close()
        assert area.size("L/A.tape") == pos  # found by the stripes alone
        data = b"".join(blocks)
        g = area.open("L/A.tape")
        assert not g.created and g.size() == pos
        assert g.pread(pos + 100, 0) == data  # one large read across stripes
        assert b"".join(g.pread(100_000, off) for off in range(0, pos, 100_000)) == data  # small ones, cached
        g.truncate(FILE_STRIPE + 5)
        g.close()
        assert area.size("L/A.tape") == FILE_STRIPE + 5
        assert not area.exists("L/A.tape".replace("A", "B"))
        assert area.listdir("L") == ["A.tape"] and area.listdir("") == []
        area.makedirs("L/shelf")
        area.rename("L/A.tape", "L/shelf/A.tape")
        assert area.listdir("L") == [] and area.listdir("L/shelf") == ["A.tape"]
        assert area.open("L/shelf/A.tape").pread(FILE_STRIPE + 100, 0) == data[: FILE_STRIPE + 5]
        h = area.open("L/gap.tape", create=True)  # a write past the end: zeros before it, no gap
        h.pwrite(b"z", 2 * FILE_STRIPE + 10)
        h.close()
        assert area.size("L/gap.tape") == 2 * FILE_STRIPE + 11
        assert area.open("L/gap.tape").pread(3 * FILE_STRIPE, 0) == bytes(2 * FILE_STRIPE + 10) + b"z"
        area.remove_tree("L")
        assert area.listdir("L/shelf") == [] and not area.exists("L/shelf/A.tape")
        with pytest.raises(FileNotFoundError):
            area.size("L/shelf/A.tape")
        # The stripe objects themselves: names as formats.md says, none left.
        io = area.io  # type: ignore[attr-defined]
        assert not [o.key for o in io.list_objects()] and stripe_name("L/A.tape", 1) == "L/A.tape.00000001"
    finally:
        backend.close()


def test_cartridges_on_rados_through_the_shelf_and_a_repartition(ceph_lab: CephLab, location: str,
                                                                  tmp_path: Path) -> None:
    """The media manager on a RADOS area: a written cartridge leaves through the mail slots (its
    stripes move to LIB/shelf/) and comes back whole; MTMKPART removes its file; library delete
    removes the rest."""
    from vstor.media import tapedrive as td
    with open_backend(location, str(ceph_lab.conf), timeout=CLIENT_TIMEOUT) as backend:
        area = backend.file_area("media", "")
        mgr = MediaManager(str(tmp_path), files=area)
        mgr.create_library("L", "tape", 4, 1, 1)
        mgr.create_media("L", ["VT0001L9", "VT0002L9"], capacity=64 * MiB)
        mgr.load("L", "VT0001L9", 0)
        blocks = [os.urandom(RECORD) for _ in range(20)]
        drive = mgr.drive("L", 0)
        for blk in blocks:
            drive.write(blk)
        mgr.unload("L", 0)
        assert area.listdir("L") == ["VT0001L9.tape"] and not glob.glob(f"{tmp_path}/media/**/*.tape", recursive=True)
        mgr.export("L", "VT0001L9")
        mgr.import_("L", "open")
        assert area.listdir("L") == [] and area.listdir("L/shelf") == ["VT0001L9.tape"]
        mgr.import_("L", "close")
        assert area.listdir("L/shelf") == [] and area.listdir("L") == ["VT0001L9.tape"]
        mgr.load("L", "VT0001L9", 0)
        drive = mgr.drive("L", 0)
        assert [drive.read(RECORD) for _ in blocks] == blocks and drive.read(RECORD) == b""  # then the filemark
        drive.op(td.MTMKPART, 8)  # erase: two partitions, new files
        assert area.listdir("L") == ["VT0001L9.p1.tape", "VT0001L9.tape"]
        assert area.size("L/VT0001L9.tape") == 64  # just the header again
        mgr.unload("L", 0)
        mgr.delete_library("L")
        assert area.listdir("L") == []
        mgr.close()


class Host:
    """One "host": its own state directory for the pool, and a store, media manager and
    backup engine opened on it, as the daemon opens them."""

    def __init__(self, base: Path, location: str, conf: str, clock: ManualClock) -> None:
        self.dir = str(base / "state")
        write_stub(self.dir, location, conf, None)  # what 'pool init LOCATION --attach' leaves
        self.store = Store.open(self.dir, clock=clock)
        try:
            self.media = MediaManager(self.dir, self.store.media_key, files=media_files(self.dir, self.store.backend),
                                      state=self.store.files)
            self.engine = BackupEngine(self.store, self.media, clock=clock)
        except BaseException:
            self.store.close()
            raise

    def local_files(self) -> list[str]:
        """Cartridge and catalog files under the state directory (there must be none)."""
        return sorted(glob.glob(f"{self.dir}/media/**/*.tape", recursive=True)
                      + glob.glob(f"{self.dir}/backup/catalog.db*"))

    def close(self) -> None:
        self.engine.close()
        self.media.close()
        self.store.close()


def test_a_backup_on_rados_is_listed_and_restored_on_another_host(ceph_lab: CephLab, location: str,
                                                                   tmp_path: Path) -> None:
    conf, clock = str(ceph_lab.conf), ManualClock()
    with open_backend(location, conf, timeout=CLIENT_TIMEOUT) as backend:
        init_backend_pool(backend, segment_size=16 * MiB)
    a = Host(tmp_path / "hostA", location, conf, clock)
    opened = [a]
    try:
        a.media.create_library("lib", "tape", 4, 1, 1)
        a.media.create_media("lib", ["VT0001L9", "VT0002L9"], capacity=64 * MiB)
        want = {"x": os.urandom(3 * MiB), "y": os.urandom(MiB + 4096)}
        for name, data in want.items():
            vol = a.store.create_volume(name, 4 * MiB)
            a.store.write(vol.id, 0, data)
        a.store.event(lambda st: st.catalog.make_group_create(st.table, "g", ["x", "y"], 0.0))
        a.engine.create_policy(name="p", source="g", library="lib", media=["VT0001L9", "VT0002L9"], retention="7d")
        job = a.engine.run("p", None)
        assert job["status"] == "done" and job["verify"] == "ok", job
        assert a.local_files() == []  # the cartridge and the catalog are in the cluster
        opened.remove(a)
        a.close()
        b = Host(tmp_path / "hostB", location, conf, clock)
        opened.append(b)
        listed = b.engine.catalog.jobs()
        assert [(j["id"], j["status"]) for j in listed] == [(job["id"], "done")]
        used = {r["barcode"]: r["used"] for r in b.media.inventory("lib") if r["barcode"]}
        assert used["VT0001L9"] > 4 * MiB and used["VT0002L9"] == 0  # the cartridges' bytes, from RADOS
        b.engine.restore(job["id"], "r")
        for name, data in want.items():
            vol = b.store.volume(f"r-{name}")
            assert b.store.read(vol.id, 0, len(data)) == data
        assert b.local_files() == []
    finally:
        for h in opened:
            h.close()


@pytest.mark.root
def test_a_tar_on_a_drive_file_reads_back_after_the_daemon_moves(ceph_lab: CephLab, location: str,
                                                                  short_dir: Path, tmp_path: Path) -> None:
    from harness import run
    from radoshosts import RadosHost
    conf = str(ceph_lab.conf)
    src = tmp_path / "src" / f"t-{uuid.uuid4().hex[:6]}"
    src.mkdir(parents=True)
    (src / "data.bin").write_bytes(os.urandom(9 * MiB + 123))  # three stripes and more
    (src / "note.txt").write_text("on rados\n")
    a = RadosHost(short_dir / "hostA", location, conf)
    b = None
    try:
        a.start()
        a.vstor("library", "create", "L", "--type", "tape", "--slots", "4", "--drives", "1", "--mailslots", "1")
        a.vstor("media", "create", "L", "--range", "VT0001L9-VT0002L9", "--capacity", "64M")
        a.vstor("media", "load", "L", "VT0001L9", "--drive", "0")
        run(["tar", "-b", "512", "-cf", os.path.join(a.mnt, "media", "L", "drive0"), "-C", str(src.parent), src.name])
        a.stop()
        b = RadosHost(short_dir / "hostB", location, conf, attach=True)
        b.start()
        out = tmp_path / "out"
        out.mkdir()
        run(["tar", "-b", "512", "-xf", os.path.join(b.mnt, "media", "L", "drive0"), "-C", str(out)])
        assert (out / src.name / "data.bin").read_bytes() == (src / "data.bin").read_bytes()
        assert (out / src.name / "note.txt").read_text() == "on rados\n"
        assert not glob.glob(os.path.join(b.pool, "media", "**", "*.tape"), recursive=True)
        b.stop()
    finally:
        a.cleanup()
        if b is not None:
            b.cleanup()
