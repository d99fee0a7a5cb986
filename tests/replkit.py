"""Two arrays in the DR lab, paired: the fixture the replication tests share.

Site A and site B each run an array in their own network namespace (vm/lab.py), with
certificates from one CA. Everything is torn down after the test, pass or fail: the
arrays first (their FUSE mounts live in the host's mount namespace), then the lab.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __package__:  # imported as tests.replkit (by tools/: python -m tools.NAME, tools/dr-drill)
    from .harness import Array, read_direct
else:  # imported as replkit (tests/ on sys.path: the tests)
    from harness import Array, read_direct  # type: ignore[no-redef]  # noqa: E402

from vm.lab import Lab  # noqa: E402
from vstor.replication.pki import init_ca, issue  # noqa: E402

PORT = 7450


@dataclass
class Sites:
    lab: Lab
    a: Array
    b: Array
    tls: str

    def endpoint(self, site: str) -> str:
        return f"{self.lab.address(site)}:{PORT}"

    def start(self, site: str, check: bool = True, env: dict | None = None):  # noqa: ANN201
        arr = self.a if site == "a" else self.b
        return arr.start(check=check, env=env)

    def pair(self, group: str = "g", wait: bool = True, extra: tuple[str, ...] = ()) -> None:
        """Pair ``group`` from A (primary) to B (secondary) and wait for PAIR."""
        self.b.vstor("pair", "create", group, "--secondary", "--peer", self.endpoint("a"), "--peer-name", "site-a")
        self.a.vstor("pair", "create", group, "--peer", self.endpoint("b"), "--peer-name", "site-b", *extra)
        if wait:
            wait_for(lambda: status(self.a, group)["state"] == "PAIR", 120, f"{group} reaches PAIR")


def status(arr: Array, group: str) -> dict:
    return json.loads(arr.vstor("pair", "status", group, "--json").stdout)[0]


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting until {what}")


def drained(a: Array, group: str = "g") -> bool:
    st = status(a, group)
    return st["state"] in ("PAIR", "PFUL") and st["lag_records"] == 0


def same_images(a: Array, b: Array, names: list[str]) -> None:
    for n in names:
        da, db = read_direct(a.image(n)), read_direct(b.image(n))
        assert da == db, f"volume {n} differs between the sites"


def make_lab(base: Path, made: list) -> tuple[Lab, str]:
    """A lab (torn down with ``made``) and a CA with certificates for site-a and site-b."""
    lab = Lab(f"r{uuid.uuid4().hex[:6]}")
    made.append(lab)
    lab.up()
    tls = str(base / "tls")
    init_ca(tls)
    issue(tls, "site-a")
    issue(tls, "site-b")
    return lab, tls


def make_sites(base: Path, made: list, init: Callable[[str], dict] | None = None,
               nbd_port: int | None = None, shared: tuple[Lab, str] | None = None) -> Sites:
    """The lab, a CA, and an array per site; with ``nbd_port`` each array also serves NBD on its
    site's address (array start --nbd). ``shared``: a lab and CA (make_lab) that outlive these
    arrays, healed first in case a test before left the link cut."""
    if shared is None:
        lab, tls = make_lab(base, made)
    else:
        lab, tls = shared
        lab.heal()
    sites = []
    for site in ("a", "b"):
        arr = Array(base / f"site-{site}", **(init(site) if init else {}))
        made.append(arr)
        arr.netns = lab.ns(site)
        arr.start_args = ["--listen", f"{lab.address(site)}:{PORT}", "--tls-dir", tls, "--name", f"site-{site}"]
        if nbd_port:
            arr.start_args += ["--nbd", f"{lab.address(site)}:{nbd_port}"]
        sites.append(arr)
    _both(lambda arr: arr.start(), sites)  # the two sites start at once, as they would in life
    return Sites(lab, sites[0], sites[1], tls)


def _both(fn: Callable[[Array], object], arrays: list[Array]) -> None:
    """Run ``fn`` on every array at once (threads: each waits on its own subprocesses); every
    call runs to its end, then the first error, if any, is raised."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, len(arrays))) as ex:
        futures = [ex.submit(fn, arr) for arr in arrays]
    for f in futures:
        f.result()


def teardown(made: list) -> None:
    try:
        _both(lambda arr: arr.cleanup(), [obj for obj in reversed(made) if isinstance(obj, Array)])
    finally:
        for obj in made:
            if isinstance(obj, Lab):
                obj.down()


# -- the cross-volume workload (tests/group_workload.py) on a paired group ----------------------
SLOTS = 1024


def setup_group(arr: Array, size: str = "16M") -> None:
    arr.create("orders", size)
    arr.create("payments", size)
    arr.vstor("group", "create", "g", "--volumes", "orders,payments")


def start_workload(arr: Array, progress: Path, seconds: float):  # noqa: ANN201
    import subprocess

    if not progress.exists():
        progress.write_bytes(bytes(8))
    return subprocess.Popen([sys.executable, str(Path(__file__).parent / "group_workload.py"),
                             arr.image("orders"), arr.image("payments"), str(progress), "--slots", str(SLOTS),
                             "--seconds", str(seconds)])


def stop_workload(wl) -> None:  # noqa: ANN001
    """End the workload after its current record pair (SIGTERM; group_workload.py), rather
    than waiting out its --seconds."""
    wl.terminate()
    assert wl.wait(60) == 0, "the workload failed"


def acked(progress: Path) -> int:
    import struct

    return struct.unpack("<Q", progress.read_bytes()[:8])[0]


def check_cut(arr: Array, name: str, snapshot: bool = True) -> int:
    """Take a group snapshot on ``arr`` (or read the live images) and check B-without-A never shows."""
    from group_workload import BLOCK, check_images

    if snapshot:
        arr.vstor("snapshot", "create", "g", "--name", name)
        paths = [os.path.join(arr.mnt, "snapshots", "g", name, v) for v in ("orders", "payments")]
    else:
        paths = [arr.image("orders"), arr.image("payments")]
    a, b = (read_direct(p, 0, SLOTS * BLOCK) for p in paths)
    return check_images(a, b, SLOTS, f"{arr.base.name} {name}")
