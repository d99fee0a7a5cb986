"""Loop devices over volume images (losetup), for ``vstor volume attach/detach``."""

from __future__ import annotations

import json
import os
import subprocess
import time

from vstor.errors import Busy, ExternalToolError


def _run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        msg = (r.stderr.strip() or f"exit {r.returncode}").splitlines()[-1]
        raise ExternalToolError(f"{' '.join(cmd)} failed: {msg}")
    return r.stdout


def loops_for(image: str) -> list[dict]:
    """Loop devices whose backing file is ``image``: [{'name', 'back-file', 'dio'}]."""
    out = _run(["losetup", "--list", "--json", "-O", "NAME,BACK-FILE,DIO"])
    devices = json.loads(out or '{"loopdevices": []}').get("loopdevices", [])
    real = os.path.realpath(image)
    return [d for d in devices if (d.get("back-file") or "").split(" (deleted)")[0] == real]


def attach(image: str, direct_io: bool = True, read_only: bool = False) -> dict:
    cmd = ["losetup", "--find", "--show"]
    if direct_io:
        cmd.append("--direct-io=on")
    if read_only:
        cmd.append("--read-only")
    dev = _run([*cmd, image]).strip()
    dio = next((d.get("dio") for d in loops_for(image) if d["name"] == dev), None)
    return {"device": dev, "direct_io": dio in (True, 1, "1")}


def _mounted(dev: str) -> str | None:
    with open("/proc/mounts") as f:
        for line in f:
            src, target = line.split()[:2]
            if src == dev:
                return target
    return None


def detach(dev: str, timeout: float = 30.0) -> None:
    """Flush and detach ``dev``; returns once the device no longer exists as a loop device."""
    target = _mounted(dev)
    if target:
        raise Busy(f"{dev} is mounted on {target}; unmount it first")
    subprocess.run(["blockdev", "--flushbufs", dev], capture_output=True)
    _run(["losetup", "-d", dev])
    backing = f"/sys/block/{os.path.basename(dev)}/loop/backing_file"
    deadline = time.monotonic() + timeout
    while os.path.exists(backing):
        if time.monotonic() > deadline:
            raise Busy(f"{dev} is still in use; it detaches when its last user closes it")
        time.sleep(0.05)
