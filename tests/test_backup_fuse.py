"""The backup flow through the real daemon and CLI, and the restore a machine without vstor
does: mt and dd on the drive file, GNU tar extracting the images."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

pytestmark = pytest.mark.root


def sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def test_backup_run_restore_and_plain_tar_restore(array, tmp_path):
    arr = array
    arr.create("v", "64M")
    with open(arr.image("v"), "r+b") as f:
        for off in range(0, 64 << 20, 8 << 20):
            f.seek(off)
            f.write(os.urandom(1 << 20))
        os.fsync(f.fileno())
    arr.vstor("library", "create", "lib", "--type", "tape", "--slots", "4", "--drives", "1")
    arr.vstor("media", "create", "lib", "--range", "VT0001L9-VT0002L9", "--capacity", "256M")
    arr.vstor("backup", "policy", "create", "p", "--source", "v", "--library", "lib",
              "--media", "VT0001L9-VT0002L9", "--retention", "7d")
    job = json.loads(arr.vstor("backup", "run", "p", "--wait", "--json").stdout)
    assert job["status"] == "done" and job["verify"] == "ok", job
    snap_image = os.path.join(arr.mnt, "snapshots", "v", job["snapshot"], "v")
    want = sha(snap_image)

    r = json.loads(arr.vstor("backup", "restore", str(job["id"]), "--to", "back", "--json").stdout)
    assert r["volumes"] == ["back"] and r["seconds"] > 0
    assert sha(arr.image("back")) == want

    part = job["parts"][0]
    arr.vstor("media", "load", "lib", part["barcode"], "--drive", "0")
    tape = os.path.join(arr.mnt, "media", "lib", "ndrive0")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["mt", "-f", tape, "rewind"], check=True)
    if part["file"]:
        subprocess.run(["mt", "-f", tape, "fsf", str(part["file"])], check=True)
    subprocess.run(f"dd if={tape} bs=256k skip=1 status=none | tar -xSf - -C {out}", shell=True, check=True)
    arr.vstor("media", "unload", "lib", "--drive", "0")
    assert sha(str(out / "v" / "v.img")) == want
    assert os.stat(out / "v" / "v.img").st_blocks * 512 < 16 << 20  # holes stay holes

    jobs = json.loads(arr.vstor("backup", "jobs", "--json").stdout)
    assert [j["id"] for j in jobs] == [job["id"]]
    assert json.loads(arr.vstor("audit", "verify", "--json").stdout)["intact"]
    log = json.loads(arr.vstor("audit", "log", "--json", env=dict(arr.env, SUDO_USER="alice")).stdout)
    assert [e["action"] for e in log][:3] == ["library.create", "media.create", "backup.policy.create"]
    arr.vstor("media", "protect", "lib", "VT0002L9", "on", env=dict(arr.env, SUDO_USER="alice"))
    last = json.loads(arr.vstor("audit", "log", "--json").stdout)[-1]
    assert (last["action"], last["actor"]) == ("media.protect", "alice")  # the peer's sudo user, not root


def test_kill_9_mid_job_fails_the_job_and_the_next_one_works(array_factory):
    arr = array_factory()
    arr.start(env=dict(arr.env, VSTOR_FAULTS="backup.write=kill@4"))
    arr.create("v", "64M")
    with open(arr.image("v"), "r+b") as f:
        f.write(os.urandom(32 << 20))
        os.fsync(f.fileno())
    arr.vstor("library", "create", "lib", "--type", "tape", "--slots", "4", "--drives", "1")
    arr.vstor("media", "create", "lib", "VT0001L9", "--capacity", "256M")
    arr.vstor("backup", "policy", "create", "p", "--source", "v", "--library", "lib", "--media", "VT0001L9")
    r = arr.vstor("backup", "run", "p", "--wait", check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    arr.start()  # the kernel released the lock with the process
    jobs = json.loads(arr.vstor("backup", "jobs", "--json").stdout)
    assert jobs[0]["status"] == "failed" and "interrupted" in jobs[0]["reason"], jobs
    assert json.loads(arr.vstor("snapshot", "list", "v", "--json").stdout) == []
    inv = json.loads(arr.vstor("media", "inventory", "lib", "--json").stdout)
    assert not [e for e in inv if e["element"].startswith("drive") and e["barcode"]], inv
    job = json.loads(arr.vstor("backup", "run", "p", "--wait", "--json").stdout)
    assert job["status"] == "done" and job["verify"] == "ok", job
    r = json.loads(arr.vstor("backup", "restore", str(job["id"]), "--to", "back", "--json").stdout)
    assert sha(arr.image("back")) == sha(arr.image("v"))
    arr.stop()
    assert arr.vstor("pool", "check", arr.pool).returncode == 0


def test_a_frozen_ext4_backs_up_clean_and_the_restore_mounts(array, tmp_path):
    """--freeze: the policy's mount points are frozen around the snapshot, so the restored
    filesystem needs no journal recovery (e2fsck -n finds it clean) and holds the file."""
    arr = array
    arr.create("fs", "64M")
    dev = arr.attach("fs")
    subprocess.run(["mkfs.ext4", "-q", "-E", "nodiscard", dev], check=True)
    mnt = arr.mount_fs(dev, tmp_path / "m")
    with open(os.path.join(mnt, "data.bin"), "wb") as f:
        f.write(os.urandom(4 << 20))  # not synced: only the freeze flushes it
    want = hashlib.sha256(open(os.path.join(mnt, "data.bin"), "rb").read()).hexdigest()
    arr.vstor("library", "create", "lib", "--type", "tape", "--slots", "2", "--drives", "1")
    arr.vstor("media", "create", "lib", "VT0001L9", "--capacity", "256M")
    arr.vstor("backup", "policy", "create", "p", "--source", "fs", "--library", "lib", "--media", "VT0001L9",
              "--freeze", mnt)
    job = json.loads(arr.vstor("backup", "run", "p", "--wait", "--json").stdout)
    assert job["status"] == "done", job
    arr.vstor("backup", "restore", str(job["id"]), "--to", "back")
    back = arr.attach("back")
    assert subprocess.run(["e2fsck", "-fn", back], capture_output=True).returncode == 0
    got = arr.mount_fs(back, tmp_path / "b", "ro")
    assert hashlib.sha256(open(os.path.join(got, "data.bin"), "rb").read()).hexdigest() == want
