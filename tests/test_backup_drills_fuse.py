"""A restore drill through the real daemon and CLI: an ext4 volume backed up to tape, restored
to a scratch volume, its image on the FUSE mount attached with losetup, checked by e2fsck -fn and
by a script that reads the mounted filesystem, in an isolated network namespace; nothing is
left behind."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from pyroute2 import netns

pytestmark = pytest.mark.root


def test_drill_e2fsck_and_a_mounting_check_through_the_daemon(array, tmp_path):
    arr = array
    arr.create("fs", "32M")
    dev = arr.attach("fs")
    subprocess.run(["mkfs.ext4", "-q", "-E", "nodiscard", dev], check=True)
    mnt = arr.mount_fs(dev, tmp_path / "m")
    with open(f"{mnt}/hello", "w") as f:
        f.write("hello from the drill\n")
    arr.umount_fs(mnt)
    arr.vstor("volume", "detach", "fs")
    arr.vstor("library", "create", "lib", "--type", "tape", "--slots", "2", "--drives", "1")
    arr.vstor("media", "create", "lib", "VT0001L9", "--capacity", "128M")
    arr.vstor("backup", "policy", "create", "p", "--source", "fs", "--library", "lib", "--media", "VT0001L9",
              "--no-verify")
    job = json.loads(arr.vstor("backup", "run", "p", "--wait", "--json").stdout)
    assert job["status"] == "done", job

    d = json.loads(arr.vstor("backup", "drill", "p", "--json").stdout)["drill"]
    assert d["status"] == "passed" and d["job"] == job["id"] and d["check"] == "e2fsck -fn", d
    assert d["scratch"]["devices"][0].startswith("/dev/loop") and d["restore_s"] > 0, d
    assert f"{d['scratch']['devices'][0]}: " in d["output"] and "files (" in d["output"], d["output"]

    check = tmp_path / "check.sh"
    check.write_text('#!/bin/sh\ncat "$VSTOR_DRILL_MOUNT/hello"\nmountpoint -q "$VSTOR_DRILL_MOUNT"\n')
    check.chmod(0o755)
    r = json.loads(arr.vstor("backup", "drill", "p", "--check", str(check), "--now", "--json").stdout)
    assert r["definition"]["check"] == str(check)
    assert r["drill"]["status"] == "passed" and r["drill"]["output"] == "hello from the drill\n", r["drill"]

    for drill in json.loads(arr.vstor("backup", "drills", "--json").stdout):
        s = drill["scratch"]
        assert s["netns"] not in netns.listnetns()
        out = subprocess.run(["losetup", "--list", "-O", "BACK-FILE"], capture_output=True, text=True).stdout
        assert s["base"] not in out
        assert not any(os.path.ismount(m) for m in s.get("mounts", [])) and not os.path.exists(s["dir"])
    vols = json.loads(arr.vstor("volume", "list", "--json").stdout)
    assert sorted(v["name"] for v in vols) == ["fs"]
    report = arr.vstor("backup", "report").stdout
    assert "Restore drills" in report and "Forecast: a full restore of p" in report, report
