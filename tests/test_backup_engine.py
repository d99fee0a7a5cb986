"""The backup engine end to end, in process: policies, full and incremental jobs to emulated
tape, spanning cartridges, verify, restore byte for byte, retention, the audit log, keys,
schedules and a job interrupted by the daemon's death. The plain mt + tar restore through
FUSE is in test_backup_fuse.py."""

from __future__ import annotations

import json
import os
import random
import subprocess

import poolkit
import pytest
from poolkit import MiB, make_pool

from vstor.backup.engine import BackupEngine
from vstor.clock import ManualClock
from vstor.errors import AlreadyExists, Busy, KeyError_, MediaError, UsageError, VstorError
from vstor.faults import Faults
from vstor.media.manager import MediaManager
from vstor.store.store import Store

KiB = 1024
DAY = 86400.0
pytestmark = pytest.mark.usefixtures("pool_backend")  # each test on a local and a RADOS pool (tests/poolsite.py)
# The tests that open a cartridge file or the catalog of the pool directory themselves stay local:
# where media and catalog live on a RADOS pool is the media store's business, not these tests'.
IN_POOL_FILES = "opens a cartridge or catalog file of a local pool directory itself"


class Lab:
    """A pool with a group of two volumes, a tape library with small cartridges, an engine."""

    def __init__(self, tmp_path, encrypt: bool = False, capacity: int = 64 * MiB, carts: int = 6) -> None:
        self.pool = make_pool(tmp_path, encrypt=encrypt)
        self.key_file = str(tmp_path / "key") if encrypt else None
        self.clock = ManualClock()
        self.store = Store.open(self.pool, self.key_file, clock=self.clock)
        self.media = MediaManager(self.pool, self.store.media_key)
        self.media.create_library("lib", "tape", carts + 2, 2, 1)
        self.barcodes = [f"VT{i:04d}L9" for i in range(1, carts + 1)]
        self.media.create_media("lib", self.barcodes, capacity=capacity)
        self.faults = Faults()
        self.engine = BackupEngine(self.store, self.media, clock=self.clock, faults=self.faults)
        self.models = {"a": bytearray(8 * MiB), "b": bytearray(4 * MiB)}
        for name, m in self.models.items():
            self.store.create_volume(name, len(m))
        self.store.event(lambda st: st.catalog.make_group_create(st.table, "g", ["a", "b"], 0.0))
        self.rng = random.Random(5)

    def write(self, name: str, off: int, data: bytes) -> None:
        self.store.write(self.store.volume(name).id, off, data)
        self.models[name][off : off + len(data)] = data

    def scribble(self, n: int, size: int = 64 * KiB) -> None:
        for _ in range(n):
            name = self.rng.choice(["a", "b"])
            off = self.rng.randrange(0, len(self.models[name]) - size, 4096)
            self.write(name, off, self.rng.randbytes(size))

    def images(self) -> dict[str, bytes]:
        return {n: bytes(m) for n, m in self.models.items()}

    def read(self, name: str) -> bytes:
        vol = self.store.volume(name)
        return self.store.read(vol.id, 0, vol.size)

    def policy(self, name: str = "p", **kw: object) -> dict:
        args = {"name": name, "source": "g", "library": "lib", "media": self.barcodes, "retention": "7d"} | kw
        return self.engine.create_policy(**args)

    def close(self) -> None:
        self.engine.close()
        self.media.close()
        self.store.close()


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path)
    yield lab
    lab.close()


def test_full_then_incrementals_restore_byte_for_byte(lab):
    lab.scribble(40)
    lab.policy(level="incremental")
    points = []
    full = lab.engine.run("p", None)
    assert full["status"] == "done" and full["level"] == "full" and full["verify"] == "ok", full
    points.append((full, lab.images()))
    for _ in range(2):
        lab.clock.advance(3600)
        lab.scribble(3)  # about 1.5% of the 12 MiB changes
        inc = lab.engine.run("p", None)
        assert inc["status"] == "done" and inc["level"] == "incremental" and inc["verify"] == "ok", inc
        assert inc["bytes"] <= 2 * 3 * 64 * KiB  # follows the change, not the volume size
        points.append((inc, lab.images()))
    for i, (job, want) in enumerate(points):
        r = lab.engine.restore(job["id"], f"r{i}")
        assert r["chain"] == [j["id"] for j, _ in points[: i + 1]]
        for name, data in want.items():
            assert lab.read(f"r{i}-{name}") == data, f"job {job['id']} image {name}"
    assert len(lab.engine.catalog.restores()) == 3
    # Only the newest job's snapshot is kept: the next incremental's base.
    snaps = {s.name for s in lab.store.state.catalog.snaps.values()}
    assert snaps == {f"backup-{points[-1][0]['id']}"}


def test_a_job_spans_cartridges_and_restores(tmp_path):
    lab = Lab(tmp_path, capacity=6 * MiB)
    try:
        lab.scribble(150)
        lab.policy()
        job = lab.engine.run("p", None)
        assert job["status"] == "done", job
        assert len({p["barcode"] for p in job["parts"]}) >= 2, job["parts"]
        assert lab.engine.catalog.media(job["parts"][0]["barcode"])["state"] == "full"
        lab.engine.restore(job["id"], "r")
        assert lab.read("r-a") == bytes(lab.models["a"]) and lab.read("r-b") == bytes(lab.models["b"])
        assert all(code is None for code in lab.media.lib("lib").drives)  # every cartridge put away
    finally:
        lab.close()


@pytest.mark.local_only(IN_POOL_FILES)
def test_verify_catches_a_damaged_block_on_tape(lab):
    lab.scribble(20)
    lab.policy()
    job = lab.engine.run("p", None)
    part = job["parts"][0]
    path = lab.media.cart_path("lib", part["barcode"])
    size = os.path.getsize(path)
    with open(path, "r+b") as f:  # one byte in the middle of the data
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    v = lab.engine.verify(job["id"])
    assert v["verify"] == "failed" and v["problems"], v
    assert lab.engine.catalog.job(job["id"])["verify"] == "failed"
    with pytest.raises(VstorError):  # CorruptData from the stream, or MediaError from the cartridge
        lab.engine.restore(job["id"], "r")
    assert not [v for v in lab.store.volumes() if v.name.startswith("r-")]  # the failed restore cleaned up


def test_expire_keeps_the_newest_chain_and_recycles_emptied_media(tmp_path):
    """Retention's rules in detail (WORM, offsite, bases) are in test_backup_catalog.py; here
    the engine's jobs go through them and a recycled cartridge is written again from BOT."""
    from vstor.backup.rules.retention import apply_expiry, plan_expiry

    lab = Lab(tmp_path, carts=2)
    try:
        lab.scribble(10)
        lab.policy(retention="1d", media=[lab.barcodes[0]])
        lab.policy("q", retention="1d", media=[lab.barcodes[1]])
        first = lab.engine.run("p", None)
        other = lab.engine.run("q", None)
        lab.clock.advance(2 * DAY)
        plan = plan_expiry(lab.engine.catalog, lab.clock.time())
        assert first["id"] not in plan.expire and first["id"] in [j for j, _why in plan.kept]
        lab.engine.delete_policy("q")
        second = lab.engine.run("p", "full")
        lab.clock.advance(2 * DAY)
        third = lab.engine.run("p", "full")
        plan = plan_expiry(lab.engine.catalog, lab.clock.time())
        assert first["id"] in plan.expire and second["id"] in plan.expire and third["id"] not in plan.expire
        apply_expiry(lab.engine.catalog, plan)
        assert lab.engine.catalog.job(first["id"])["status"] == "expired"
        assert other["id"] not in plan.expire  # a deleted policy's newest chain is still kept
    finally:
        lab.close()


def test_audit_log_records_changes_and_detects_tampering(lab):
    lab.policy()
    lab.engine.delete_policy("p")
    entries = lab.engine.audit.entries()
    assert [e["action"] for e in entries] == ["backup.policy.create", "backup.policy.delete"]
    assert lab.engine.audit.verify() == []
    with poolkit.backend_for(lab.pool) as be:  # a file of a local pool, an object of a RADOS pool
        lines = be.get("backup/audit.log").decode().splitlines()
        first = json.loads(lines[0])
        first["details"]["retention"] = 999999  # someone lengthens a retention after the fact
        be.put("backup/audit.log", ("\n".join([json.dumps(first), *lines[1:]]) + "\n").encode())
    assert lab.engine.audit.verify()


def test_schedule_fires_catches_up_once_and_never_overlaps(lab):
    lab.scribble(5)
    lab.policy(schedule="0 2 * * *")
    started = []
    lab.engine.start = lambda name, level, progress=None: started.append(name) or 0  # type: ignore[method-assign]
    lab.engine.scheduler.start = lambda name: lab.engine.start(name, None)
    lab.engine.tick()
    assert started == []
    lab.clock.advance(DAY)
    lab.engine.tick()
    assert started == ["p"]
    lab.engine.tick()
    assert started == ["p"]
    lab.clock.advance(5 * DAY)  # the array was down: five runs missed, one is taken
    lab.engine.tick()
    assert started == ["p", "p"]


def test_no_two_runs_of_one_policy(lab):
    lab.policy()
    job, _args = lab.engine._prepare("p", None)
    with pytest.raises(Busy, match="already running"):
        lab.engine.run("p", None)
    assert [j["id"] for j in lab.engine.catalog.jobs("p")] == [job]  # the refused run made no job
    lab.engine._running.clear()


@pytest.mark.local_only(IN_POOL_FILES)
def test_keys_rotate_and_old_jobs_stay_restorable(tmp_path):
    lab = Lab(tmp_path, encrypt=True)
    try:
        lab.scribble(10)
        lab.policy(encrypt=True)
        one = lab.engine.run("p", None)
        want_one = lab.images()
        lab.engine.keys.rotate()
        lab.scribble(3)
        two = lab.engine.run("p", None)
        assert (one["key_id"], two["key_id"]) == (1, 2)
        assert one["verify"] == two["verify"] == "ok"
        lab.engine.restore(one["id"], "old")
        lab.engine.restore(two["id"], "new")
        assert lab.read("old-a") == want_one["a"] and lab.read("new-a") == bytes(lab.models["a"])
        # The cartridge holds no plain data: tar finds no archive in it.
        raw = open(lab.media.cart_path("lib", one["parts"][0]["barcode"]), "rb").read()
        assert bytes(lab.models["a"][:4096]) not in raw
    finally:
        lab.close()


def test_a_pool_without_a_key_refuses_encrypted_policies(lab):
    with pytest.raises(UsageError, match="needs a pool key"):
        lab.policy(encrypt=True)


def test_an_unknown_key_id_is_one_clear_error(tmp_path):
    lab = Lab(tmp_path, encrypt=True)
    try:
        with pytest.raises(KeyError_):
            lab.engine.keys.key(9)
    finally:
        lab.close()


def test_a_job_interrupted_by_a_crash_is_failed_at_restart(lab):
    lab.policy()
    job, _args = lab.engine._prepare("p", None)
    lab.engine.catalog.set_job(job, status="running")
    lab.engine.catalog.close()  # the daemon dies here
    again = BackupEngine(lab.store, lab.media, clock=lab.clock)
    row = again.catalog.job(job)
    assert row["status"] == "failed" and "interrupted" in row["reason"]
    lab.engine = again


def test_restore_refuses_an_existing_target(lab):
    lab.scribble(3)
    lab.policy()
    job = lab.engine.run("p", None)
    lab.store.create_volume("t-a", MiB)
    with pytest.raises(AlreadyExists):
        lab.engine.restore(job["id"], "t")


def test_no_appendable_media_fails_the_job_with_one_line(tmp_path):
    lab = Lab(tmp_path, capacity=2 * MiB, carts=1)
    try:
        lab.scribble(60)
        lab.policy()
        job = lab.engine.run("p", None)
        assert job["status"] == "failed" and "no cartridge of this policy can take data" in job["reason"], job
        assert not [s for s in lab.store.state.catalog.snaps.values()]  # the failed job's snapshot is gone
    finally:
        lab.close()


def test_plain_tar_restores_an_unencrypted_full_from_the_cartridge(lab, tmp_path):
    """What the mt + dd + tar recipe does, on the cartridge's blocks read in process."""
    from vstor.media.tapedrive import MTFSF, MTREW

    lab.scribble(20)
    lab.policy()
    job = lab.engine.run("p", None)
    part = job["parts"][0]
    lab.media.load("lib", part["barcode"], 0)
    drv = lab.media.drive("lib", 0)
    drv.op(MTREW, 1)
    drv.op(MTFSF, part["file"])
    drv.read(1 << 20)  # the header block: dd skip=1
    out = tmp_path / "x"
    out.mkdir()
    tar = subprocess.Popen(["tar", "-xSf", "-", "-C", str(out)], stdin=subprocess.PIPE)
    while True:
        block = drv.read(1 << 20)
        if not block:
            break
        tar.stdin.write(block)
    tar.stdin.close()
    assert tar.wait() == 0
    lab.media.unload("lib", 0)
    assert (out / "g" / "a.img").read_bytes() == bytes(lab.models["a"])
    assert (out / "g" / "b.img").read_bytes() == bytes(lab.models["b"])


@pytest.mark.local_only(IN_POOL_FILES)
def test_catalog_rebuild_from_the_cartridges_then_restore(tmp_path):
    lab = Lab(tmp_path, capacity=6 * MiB)
    try:
        lab.scribble(150)
        lab.policy(level="incremental")
        full = lab.engine.run("p", None)
        lab.scribble(3)
        inc = lab.engine.run("p", None)
        want = lab.images()
        assert len({p["barcode"] for p in full["parts"]}) >= 2  # one job spans cartridges
        lab.engine.catalog.close()
        os.unlink(os.path.join(lab.pool, "backup", "catalog.db"))
        lab.engine = BackupEngine(lab.store, lab.media, clock=lab.clock)
        assert lab.engine.catalog.jobs() == []
        r = lab.engine.rebuild("lib")
        assert r["jobs"] == [full["id"], inc["id"]] and not r["problems"], r
        rebuilt = lab.engine.catalog.job(inc["id"])
        assert rebuilt["base_job"] == full["id"] and rebuilt["level"] == "incremental"
        assert [p["file"] for p in rebuilt["parts"]] == [p["file"] for p in inc["parts"]]
        assert {v["name"]: v["sha256"] for v in rebuilt["volumes"]} == {v["name"]: v["sha256"] for v in inc["volumes"]}
        assert lab.engine.rebuild("lib")["parts"] == 0  # idempotent
        lab.engine.restore(inc["id"], "r")
        assert lab.read("r-a") == want["a"] and lab.read("r-b") == want["b"]
    finally:
        lab.close()


def test_an_interrupted_job_leaves_no_snapshot_and_no_loaded_cartridge(lab):
    lab.scribble(5)
    lab.policy()
    lab.faults.arm("backup.write", "bug")
    job = lab.engine.run("p", None)
    assert job["status"] == "failed" and "internal error" in job["reason"]
    assert not list(lab.store.state.catalog.snaps.values())
    assert all(code is None for code in lab.media.lib("lib").drives)


def test_an_offsite_cartridge_is_asked_for_by_barcode(lab):
    lab.scribble(5)
    lab.policy()
    job = lab.engine.run("p", None)
    code = job["parts"][0]["barcode"]
    lab.media.export("lib", code)
    lab.media.import_("lib", "open")  # the mail slot's cartridge goes out to the shelf
    lab.engine.refresh_locations()
    assert lab.engine.catalog.media(code)["location"] == "offsite"
    with pytest.raises(MediaError, match=f"{code} is not in library lib.*media import lib"):
        lab.engine.restore(job["id"], "r")
    lab.media.import_("lib", "close")
    lab.engine.refresh_locations()
    assert lab.engine.catalog.media(code)["location"] == "library"
    lab.engine.restore(job["id"], "r")
    assert lab.read("r-a") == bytes(lab.models["a"])


def test_a_job_waits_for_a_drive_and_says_so(lab):
    import threading
    import time

    lab.scribble(3)
    lab.policy()
    lab.media.load("lib", lab.barcodes[-1], 0)
    lab.media.load("lib", lab.barcodes[-2], 1)
    out: list[dict] = []
    t = threading.Thread(target=lambda: out.append(lab.engine.run("p", None)))
    t.start()
    try:
        deadline = time.monotonic() + 10
        while not [j for j in lab.engine.catalog.jobs() if "waiting for a drive" in j["reason"]]:
            assert time.monotonic() < deadline, lab.engine.catalog.jobs()
            time.sleep(0.01)
        assert lab.engine.catalog.jobs()[0]["status"] == "waiting"
    finally:
        lab.media.unload("lib", 0)
        t.join(30)
    assert out and out[0]["status"] == "done", out
    lab.media.unload("lib", 1)


def test_an_incremental_policy_takes_a_full_when_full_every_has_passed(lab):
    lab.scribble(5)
    lab.policy(level="incremental", full_every="7d")
    levels = []
    for _day in range(9):
        lab.scribble(1)
        levels.append(lab.engine.run("p", None)["level"])
        lab.clock.advance(DAY)
    assert levels == ["full"] + ["incremental"] * 6 + ["full", "incremental"]


def test_keys_rotate_by_age_and_the_rotation_is_audited(tmp_path):
    lab = Lab(tmp_path, encrypt=True)
    try:
        assert lab.engine.keys.current() == 1
        lab.engine.set_setting("key_rotate_every", 90 * DAY)
        lab.engine.tick()
        assert lab.engine.keys.current() == 1
        lab.clock.advance(91 * DAY)
        assert "rotated the backup key" in " ".join(lab.engine.tick())
        assert lab.engine.keys.current() == 2
        assert lab.engine.audit.entries()[-1]["action"] == "key.rotate"
    finally:
        lab.close()


def test_a_write_error_on_the_medium_fails_the_job_and_loses_nothing(lab):
    """A drive that fails a write with EIO mid-job (a stand-in for a broken drive or a bad
    spot on the tape): the job fails with one line; the earlier job on the same cartridge
    stays restorable, and the cartridge is put away."""
    import errno

    from vstor.errors import MediaError
    from vstor.media.tapedrive import TapeDrive

    lab.scribble(10)
    lab.policy()
    first = lab.engine.run("p", None)
    want = lab.images()
    writes = [0]
    real = TapeDrive.write

    def failing(self, data):  # type: ignore[no-untyped-def]
        writes[0] += 1
        if writes[0] == 5:
            raise MediaError("write error on the medium (injected)", errno.EIO)
        return real(self, data)

    TapeDrive.write = failing  # type: ignore[method-assign]
    try:
        lab.scribble(3)
        second = lab.engine.run("p", None)
    finally:
        TapeDrive.write = real  # type: ignore[method-assign]
    assert second["status"] == "failed" and "write error on the medium" in second["reason"], second
    assert all(code is None for code in lab.media.lib("lib").drives)
    assert lab.engine.verify(first["id"])["verify"] == "ok"
    lab.engine.restore(first["id"], "r")
    assert lab.read("r-a") == want["a"] and lab.read("r-b") == want["b"]
