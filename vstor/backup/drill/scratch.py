"""The scratch of a restore drill: how a restored volume is attached for its check, and how
everything a drill made is removed.

Two ways to attach a scratch volume:

* ``ImageAttach`` (the daemon's): the volume's image on the daemon's FUSE mount
  (``MOUNT/volumes/NAME``) on a loop device (losetup); for a check script, a filesystem found on
  it is also mounted read-only, so the script gets VSTOR_DRILL_MOUNT.
* ``CopyAttach`` (offline commands, in-process tests, no FUSE): a sparse copy of the volume read
  through the store into the drill's scratch directory; the check gets the copy's path as its
  device (``e2fsck -fn`` reads an image file as well as a block device).

The scratch record (a dict stored with the drill before each piece is made) names everything:
``volumes``, ``netns``, ``dir``, ``images`` (paths whose loop devices are ours), ``devices``,
``mounts``. ``remove_scratch`` takes it apart in reverse order, skips what is already gone, and
returns the problems it could not fix (one line each), so a crash at any point leaves nothing
that the next start's clean-up cannot find.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable

from vstor.backup.drill.check import remove_netns
from vstor.control.host import loop
from vstor.errors import NotFound, VstorError
from vstor.store.store import Store

__all__ = ["CopyAttach", "ImageAttach", "remove_scratch"]

CHUNK = 1 << 20


def _fs_type(dev: str) -> str | None:
    r = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", dev], capture_output=True, text=True)
    return r.stdout.strip() or None if r.returncode == 0 else None


class ImageAttach:
    def __init__(self, mount: str) -> None:
        self.mount = mount

    def image(self, name: str) -> str:
        return os.path.join(self.mount, "volumes", name)

    def attach(self, store: Store, name: str, scratch: dict, record: Callable[[dict], None], want_mount: bool) -> dict:
        """Attach volume ``name``; ``record(scratch)`` is called before each piece is made."""
        image = self.image(name)
        scratch.setdefault("images", []).append(image)
        record(scratch)
        dev = loop.attach(image)["device"]
        scratch.setdefault("devices", []).append(dev)
        record(scratch)
        out = {"device": dev}
        if want_mount and _fs_type(dev):
            target = os.path.join(scratch["dir"], f"mnt-{name}")
            os.makedirs(target, exist_ok=True)
            scratch.setdefault("mounts", []).append(target)
            record(scratch)
            if subprocess.run(["mount", "-o", "ro", dev, target], capture_output=True).returncode == 0:
                out["mount"] = target
        return out


class CopyAttach:
    def image(self, name: str) -> str:
        return name

    def attach(self, store: Store, name: str, scratch: dict, record: Callable[[dict], None], want_mount: bool) -> dict:
        vol = store.volume(name)
        path = os.path.join(scratch["dir"], f"{name}.img")
        with open(path, "wb") as f:
            for off in range(0, vol.size, CHUNK):
                data = bytes(store.read(vol.id, off, min(CHUNK, vol.size - off)))  # a view has no count()
                if data.count(0) == len(data):
                    f.seek(len(data), os.SEEK_CUR)  # holes stay holes
                else:
                    f.write(data)
            f.truncate(vol.size)
        return {"device": path}


def _backing(dev: str) -> str:
    try:
        with open(f"/sys/block/{os.path.basename(dev)}/loop/backing_file") as f:
            return f.read().strip()
    except OSError:
        return ""


def remove_scratch(store: Store, scratch: dict) -> list[str]:
    """Remove everything ``scratch`` names; returns what could not be removed."""
    problems: list[str] = []
    for target in reversed(scratch.get("mounts", [])):
        if os.path.ismount(target):
            r = subprocess.run(["umount", target], capture_output=True, text=True)
            if r.returncode:
                subprocess.run(["umount", "-l", target], capture_output=True)
    base = scratch.get("base") or "\0"
    devices = list(scratch.get("devices", []))
    for image in scratch.get("images", []):
        with contextlib.suppress(VstorError, ValueError):
            devices += [d["name"] for d in loop.loops_for(image)]
    for dev in dict.fromkeys(devices):
        if base in _backing(dev):  # still ours: its backing file is a drill scratch image
            try:
                loop.detach(dev, timeout=10)
            except VstorError as e:
                problems.append(f"loop device {dev}: {e}")
    for name in scratch.get("volumes", []):
        try:
            store.delete_volume(name)
        except NotFound:
            pass
        except VstorError as e:
            problems.append(f"scratch volume {name}: {e}")
    if scratch.get("netns"):
        try:
            remove_netns(scratch["netns"])
        except Exception as e:  # noqa: BLE001 - pyroute2 raises OSError and NetlinkError
            problems.append(f"network namespace {scratch['netns']}: {e}")
    if scratch.get("dir"):
        shutil.rmtree(scratch["dir"], ignore_errors=True)
        if os.path.exists(scratch["dir"]):
            problems.append(f"scratch directory {scratch['dir']} is left (a mount on it?)")
    return problems
