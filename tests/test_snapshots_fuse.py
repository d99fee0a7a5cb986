"""Consistency groups and snapshots through the real daemon, FUSE mount, loop devices and ext4.

Everything goes through the CLI (``vstor group|snapshot|volume ...``) and the mounted tree:
DIR/volumes/<vol> (read-write images) and DIR/snapshots/<group-or-volume>/<snap>/<vol>
(read-only images). The ``array`` fixture tears down mounts, loop devices and the daemon.
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import random
import re
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from harness import Array, one_error_line, read_direct, run

from vstor.control.protocol import call
from vstor.store.superblock import layout

pytestmark = pytest.mark.root

MiB = 1 << 20
CHUNK = 512 * 1024
VOL = 64 * MiB

NOT_FOUND, ALREADY_EXISTS, BUSY = 3, 4, 5


# -- helpers -----------------------------------------------------------------------------------
def _read_buffered(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _assert_same(got: bytes, model: bytes | bytearray, what: str) -> None:
    assert len(got) == len(model), f"{what}: reads {len(got)} bytes, expected {len(model)}"
    if got != model:
        first = next(i for i in range(len(model)) if got[i] != model[i])
        raise AssertionError(f"{what}: differs from the expected content first at byte {first} "
                             f"(chunk {first // CHUNK})")


def _data_chunks(models: list[bytes | bytearray]) -> list[int]:
    """The chunks that hold data in any of ``models`` (images of one size), and the first and last."""
    zero = bytes(CHUNK)
    n = len(models[0]) // CHUNK
    return sorted({0, n - 1} | {i for i in range(n) for m in models if m[i * CHUNK : (i + 1) * CHUNK] != zero})


def _assert_chunks(path: str, model: bytes | bytearray, chunks: list[int] | None, what: str) -> None:
    """Compare ``chunks`` of the image (buffered reads) with the model; None: the whole image."""
    if chunks is None:
        _assert_same(_read_buffered(path), model, what)
        return
    assert os.path.getsize(path) == len(model), f"{what}: size {os.path.getsize(path)}, expected {len(model)}"
    with open(path, "rb") as f:
        for i in chunks:
            f.seek(i * CHUNK)
            got, want = f.read(CHUNK), model[i * CHUNK : (i + 1) * CHUNK]
            if got != want:
                first = next((j for j in range(min(len(got), len(want))) if got[j] != want[j]), len(got))
                raise AssertionError(f"{what}: differs from the expected content first at byte "
                                     f"{i * CHUNK + first} (chunk {i})")


def _assert_image(path: str, model: bytes | bytearray, what: str | None = None) -> None:
    _assert_same(read_direct(path), model, what or path)


def _write(path: str, model: bytearray | None, writes: list[tuple[int, bytes]]) -> None:
    """pwrite every (offset, data) into the image, fsync, and apply the same to ``model``."""
    fd = os.open(path, os.O_RDWR)
    try:
        for off, data in writes:
            assert os.pwrite(fd, data, off) == len(data), (path, off, len(data))
            if model is not None:
                model[off : off + len(data)] = data
        os.fsync(fd)
    finally:
        os.close(fd)


def _nonzero(rng: random.Random, n: int) -> bytes:
    """Random bytes with no zero byte (an all-zero write is stored as a trim)."""
    return bytes(b | 1 for b in rng.randbytes(n))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(4 * MiB):
            h.update(piece)
    return h.hexdigest()


def _json(arr: Array, *args: str) -> object:
    return json.loads(arr.vstor(*args, "--json").stdout)


def _snap_image(arr: Array, owner: str, snap: str, vol: str) -> str:
    return os.path.join(arr.mnt, "snapshots", owner, snap, vol)


def _snaps(arr: Array, owner: str | None = None) -> dict[str, dict]:
    listing = _json(arr, "snapshot", "list", *([owner] if owner else []))
    return {f"{s['owner']}/{s['name']}": s for s in listing}


def _refused(arr: Array, code: int, *args: str) -> str:
    """Run a vstor command that must fail with exit ``code`` and exactly one error line."""
    what = "vstor " + " ".join(args)
    r = arr.vstor(*args, check=False)
    line = one_error_line(r, what)
    assert r.returncode == code, f"{what}: exit {r.returncode}, expected {code}: {line}"
    return line


def _wait_path(path: str, present: bool, timeout: float = 5) -> None:
    """The kernel may cache a FUSE entry (or its absence) for entry_timeout (1 s)."""
    deadline = time.monotonic() + timeout
    while os.path.exists(path) != present and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.exists(path) == present, f"{path} {'missing' if present else 'still there'}"


def _make_group(arr: Array, name: str, vols: dict[str, int]) -> dict[str, bytearray]:
    for v, size in vols.items():
        arr.create(v, str(size))
    arr.vstor("group", "create", name, "--volumes", ",".join(vols))
    return {v: bytearray(size) for v, size in vols.items()}


def _fsck(dev: str, *flags: str) -> subprocess.CompletedProcess:
    return run(["e2fsck", *flags, dev], check=False)


def _ext4_features(dev: str) -> list[str]:
    """The superblock's feature flags; ``needs_recovery`` means the journal must be replayed
    (``e2fsck -n`` skips that replay and still exits 0, so it cannot tell)."""
    out = run(["dumpe2fs", "-h", dev]).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("Filesystem features:"))
    return line.split(":", 1)[1].split()


# -- 1. CLI round trip -------------------------------------------------------------------------
@pytest.mark.usefixtures("pool_backend")  # also on a RADOS pool (tests/poolsite.py)
def test_group_snapshot_round_trip(array):
    rng = random.Random(101)
    models = _make_group(array, "g", {"a": VOL, "b": VOL})
    g = _json(array, "group", "show", "g")
    assert g["volumes"] == ["a", "b"], g
    assert g["snapshots"] == 0 and g["policy"] is None, g
    initial = {
        "a": [(0, rng.randbytes(3 * MiB)), (10 * MiB + 123, rng.randbytes(700000)), (40 * MiB, rng.randbytes(2 * MiB))],
        "b": [(MiB, rng.randbytes(2 * MiB + 777)), (60 * MiB, rng.randbytes(MiB))],
    }
    for v, writes in initial.items():
        _write(array.image(v), models[v], writes)
    seq_before = _json(array, "group", "show", "g")["seq"]
    assert seq_before > 0

    s1 = _json(array, "snapshot", "create", "g", "--name", "s1")
    assert (s1["name"], s1["owner"], s1["kind"]) == ("s1", "g", "group"), s1
    assert [m["name"] for m in s1["volumes"]] == ["a", "b"], s1
    assert s1["seq"] == seq_before, f"snapshot seq {s1['seq']} != group seq at the cut {seq_before}"
    old = {v: bytes(m) for v, m in models.items()}
    assert sorted(os.listdir(os.path.join(array.mnt, "snapshots"))) == ["g"]
    assert sorted(os.listdir(os.path.join(array.mnt, "snapshots", "g"))) == ["s1"]
    assert sorted(os.listdir(os.path.join(array.mnt, "snapshots", "g", "s1"))) == ["a", "b"]
    for v in "ab":
        st = os.stat(_snap_image(array, "g", "s1", v))
        assert st.st_size == VOL and st.st_mode & 0o222 == 0, (v, oct(st.st_mode), st.st_size)

    overwrites = {
        "a": [(CHUNK - 1000, _nonzero(rng, 2000)),  # across a chunk boundary
              (10 * MiB + 5123, _nonzero(rng, 4096)),  # inside earlier data
              (20 * MiB, _nonzero(rng, 100000))],  # into a hole
        "b": [(MiB + 333, b"\xa5")],  # one byte
    }
    for v, writes in overwrites.items():
        _write(array.image(v), models[v], writes)

    for v in "ab":
        _assert_image(_snap_image(array, "g", "s1", v), old[v], f"snapshot g/s1/{v}")
        _assert_same(_read_buffered(_snap_image(array, "g", "s1", v)), old[v], f"snapshot g/s1/{v} (buffered)")
        _assert_image(array.image(v), models[v], f"volume {v}")

    # s1 alone holds the overwritten bytes: exclusive is exactly those, the rest is shared with the volumes
    replaced = 2000 + 4096 + 1  # the hole at 20M was not in s1
    s1_total = sum(len(d) for ws in initial.values() for _o, d in ws)
    listing = _snaps(array, "g")
    assert list(listing) == ["g/s1"], listing
    got = listing["g/s1"]
    assert got["seq"] == s1["seq"], got
    assert (got["exclusive"], got["shared"]) == (replaced, s1_total - replaced), got

    s2 = _json(array, "snapshot", "create", "g", "--name", "s2")
    assert s2["seq"] > s1["seq"], (s1["seq"], s2["seq"])
    listing = _snaps(array)
    assert list(listing) == ["g/s1", "g/s2"], listing
    assert listing["g/s2"]["exclusive"] == 0, listing["g/s2"]  # everything in s2 is live too
    assert listing["g/s1"]["exclusive"] == replaced, listing["g/s1"]
    for v in "ab":
        _assert_image(_snap_image(array, "g", "s2", v), models[v], f"snapshot g/s2/{v}")

    g = _json(array, "group", "show", "g")
    assert g["volumes"] == ["a", "b"] and g["snapshots"] == 2 and g["seq"] == s2["seq"], g
    live = s1_total + 100000
    assert g["space"] == {"allocated": live, "snapshots": replaced, "total": live + replaced}, g["space"]
    groups = _json(array, "group", "list")
    assert [(x["name"], x["volumes"], x["snapshots"]) for x in groups] == [("g", ["a", "b"], 2)], groups

    diff = {d["volume"]: d for d in _json(array, "snapshot", "diff", "g", "s1", "s2")}
    assert set(diff) == {"a", "b"}, diff
    for v, writes in overwrites.items():
        want = sorted([off, off + len(data)] for off, data in writes)
        assert diff[v]["ranges"] == want, (v, diff[v]["ranges"], want)
        assert diff[v]["changed_bytes"] == sum(len(d) for _o, d in writes), diff[v]
    # the same two snapshots the other way round, and a snapshot against itself
    back = {d["volume"]: d["ranges"] for d in _json(array, "snapshot", "diff", "g", "s2", "s1")}
    assert back == {v: d["ranges"] for v, d in diff.items()}, back
    same = _json(array, "snapshot", "diff", "g", "s1", "s1")
    assert all(d["ranges"] == [] and d["changed_bytes"] == 0 for d in same), same


# -- 2. refusals -------------------------------------------------------------------------------
def test_refusals_leave_everything_unchanged(array):
    rng = random.Random(202)
    models = _make_group(array, "g", {"a": VOL, "b": VOL})
    _write(array.image("a"), models["a"], [(0, rng.randbytes(2 * MiB)), (30 * MiB + 7, rng.randbytes(MiB))])
    _write(array.image("b"), models["b"], [(5 * MiB, rng.randbytes(MiB))])
    array.vstor("snapshot", "create", "g", "--name", "s1")
    s1 = {v: bytes(m) for v, m in models.items()}

    def unchanged(snaps: list[str], vols: dict[str, bytes | bytearray], whole: bool = False) -> None:
        """The snapshot list, and the images: ``whole`` compares every byte (twice in this test:
        64 MiB images through FUSE take seconds each); otherwise every chunk that holds data in
        any model of the test, where a refused command that went half-way (a rollback, a delete)
        would show, and the first and last chunk."""
        assert list(_snaps(array, "g")) == snaps
        models = [*vols.values(), *s1.values()]
        chunks = None if whole else _data_chunks(models)
        for v, model in vols.items():
            _assert_chunks(array.image(v), model, chunks, f"volume {v}")
        for v in "ab":
            _assert_chunks(_snap_image(array, "g", "s1", v), s1[v], chunks, f"snapshot g/s1/{v}")

    # writing to a snapshot image
    img = _snap_image(array, "g", "s1", "a")
    for flags in (os.O_RDWR, os.O_WRONLY, os.O_WRONLY | os.O_TRUNC):
        with pytest.raises(OSError) as ei:
            fd = os.open(img, flags)
            os.close(fd)
        assert ei.value.errno == errno.EROFS, (flags, ei.value)
    with pytest.raises(OSError) as ei:
        os.truncate(img, 0)
    assert ei.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM), ei.value
    unchanged(["g/s1"], models)

    # deleting a snapshot whose image is attached
    array.vstor("snapshot", "create", "g", "--name", "victim")
    dev = array.vstor("volume", "attach", "--snapshot", "g/victim/a").stdout.strip()
    assert dev.startswith("/dev/loop"), dev
    line = _refused(array, BUSY, "snapshot", "delete", "g", "victim")
    assert "victim" in line, line
    unchanged(["g/s1", "g/victim"], models)
    _assert_image(_snap_image(array, "g", "victim", "a"), models["a"], "snapshot g/victim/a")
    out = array.vstor("volume", "detach", "--snapshot", "g/victim/a").stdout
    assert dev in out, out
    with open(_snap_image(array, "g", "victim", "b"), "rb") as f:  # an image held open by a process
        _refused(array, BUSY, "snapshot", "delete", "g", "victim")
        assert f.read(MiB) == bytes(models["b"][:MiB])
    array.vstor("snapshot", "delete", "g", "victim")
    _wait_path(os.path.join(array.mnt, "snapshots", "g", "victim"), present=False)
    unchanged(["g/s1"], models)

    # an existing snapshot name
    assert "s1" in _refused(array, ALREADY_EXISTS, "snapshot", "create", "g", "--name", "s1")
    unchanged(["g/s1"], models)

    # deleting a group member; after 'group remove' the delete works and group snapshots keep its data
    array.create("c", str(VOL))
    array.vstor("group", "add", "g", "c")
    c_data = rng.randbytes(3 * MiB)
    c_model = bytearray(VOL)
    _write(array.image("c"), c_model, [(4 * MiB + 1, c_data)])
    array.vstor("snapshot", "create", "g", "--name", "with-c")
    line = _refused(array, BUSY, "volume", "delete", "c")
    assert "group" in line, line
    _assert_image(array.image("c"), c_model, "volume c")
    assert _json(array, "group", "show", "g")["volumes"] == ["a", "b", "c"]
    line = _refused(array, BUSY, "group", "delete", "g")
    assert _json(array, "group", "show", "g")["volumes"] == ["a", "b", "c"]
    g = _json(array, "group", "remove", "g", "c")
    assert g["volumes"] == ["a", "b"], g
    array.vstor("volume", "delete", "c")
    assert [v["name"] for v in array.status()["volumes"]] == ["a", "b"]
    _wait_path(array.image("c"), present=False)
    _assert_image(_snap_image(array, "g", "with-c", "c"), c_model, "snapshot g/with-c/c of a deleted volume")
    array.vstor("snapshot", "delete", "g", "with-c")
    unchanged(["g/s1"], models)

    # unknown names
    for args in (
        ("snapshot", "delete", "g", "nosuch"),
        ("snapshot", "delete", "nosuch", "s1"),
        ("snapshot", "create", "nosuch"),
        ("snapshot", "list", "nosuch"),
        ("snapshot", "rollback", "g", "nosuch"),
        ("snapshot", "clone", "g", "nosuch", "--as", "x"),
        ("snapshot", "diff", "g", "s1", "nosuch"),
        ("snapshot", "diff", "g", "nosuch", "s1"),
        ("group", "show", "nosuch"),
        ("group", "delete", "nosuch"),
        ("group", "add", "nosuch", "a"),
        ("group", "add", "g", "nosuch"),
        ("group", "remove", "g", "nosuch"),
        ("volume", "attach", "--snapshot", "g/nosuch/a"),
        ("volume", "attach", "--snapshot", "g/s1/nosuch"),
        ("volume", "attach", "--snapshot", "nosuch/s1/a"),
    ):
        _refused(array, NOT_FOUND, *args)
    assert not os.path.exists(os.path.join(array.mnt, "volumes", "x"))
    assert not os.path.exists(os.path.join(array.mnt, "snapshots", "g", "nosuch"))
    unchanged(["g/s1"], models, whole=True)  # the last look at every byte before the rollback rewrites a and b

    # rollback while a member is attached: refused, then forced
    s1_models = {v: bytearray(m) for v, m in models.items()}
    _write(array.image("a"), models["a"], [(MiB, rng.randbytes(MiB))])
    dev = array.attach("a")
    line = _refused(array, BUSY, "snapshot", "rollback", "g", "s1")
    assert "a" in line, line
    unchanged(["g/s1"], models)  # no safety snapshot either
    r = _json(array, "snapshot", "rollback", "g", "s1", "--force")
    assert r["safety_snapshot"].startswith("pre-rollback-"), r
    array.vstor("volume", "detach", "a")
    unchanged(["g/s1", f"g/{r['safety_snapshot']}"], s1_models)
    _assert_image(_snap_image(array, "g", r["safety_snapshot"], "a"), models["a"], "safety snapshot of a")
    models = s1_models

    # names shared between groups and volumes; a volume in another group
    assert "'a'" in _refused(array, ALREADY_EXISTS, "group", "create", "a")
    _refused(array, ALREADY_EXISTS, "volume", "create", "g", "--size", "16M")
    array.create("d", "16M")
    array.vstor("group", "create", "h", "--volumes", "d")
    line = _refused(array, BUSY, "group", "add", "g", "d")
    assert "'h'" in line, line
    _refused(array, BUSY, "group", "create", "h2", "--volumes", "a")
    _refused(array, ALREADY_EXISTS, "group", "add", "g", "a")
    groups = {x["name"]: x["volumes"] for x in _json(array, "group", "list")}
    assert groups == {"g": ["a", "b"], "h": ["d"]}, groups
    assert not os.path.exists(os.path.join(array.mnt, "volumes", "h2"))
    unchanged(["g/s1", f"g/{r['safety_snapshot']}"], models, whole=True)


# -- 3. rollback and clone ---------------------------------------------------------------------
def test_rollback_and_clone_through_fuse(array):
    rng = random.Random(303)
    models = _make_group(array, "g", {"a": VOL, "b": VOL})
    _write(array.image("a"), models["a"], [(0, rng.randbytes(MiB)), (17 * MiB + 5, rng.randbytes(2 * MiB))])
    _write(array.image("b"), models["b"], [(3 * MiB, rng.randbytes(MiB + 3))])
    array.vstor("snapshot", "create", "g", "--name", "s1")
    s1 = {v: bytes(m) for v, m in models.items()}
    # change every member after s1: overwrite, fill a hole, trim a range with zeros
    _write(array.image("a"), models["a"], [(100, _nonzero(rng, 5000)), (50 * MiB, _nonzero(rng, MiB)),
                                           (17 * MiB + 5, bytes(CHUNK * 2))])
    _write(array.image("b"), models["b"], [(3 * MiB, _nonzero(rng, 4096)), (63 * MiB, _nonzero(rng, MiB))])
    before = {v: bytes(m) for v, m in models.items()}
    for v in "ab":
        assert before[v] != s1[v]
        _assert_image(array.image(v), before[v], f"volume {v} before the rollback")

    r = _json(array, "snapshot", "rollback", "g", "s1")
    safety = r["safety_snapshot"]
    assert safety.startswith("pre-rollback-") and r["rolled_back"], r
    for v in "ab":
        _assert_image(array.image(v), s1[v], f"volume {v} after the rollback")
        _assert_same(_read_buffered(array.image(v)), s1[v], f"volume {v} after the rollback (buffered)")
        _assert_image(_snap_image(array, "g", safety, v), before[v], f"safety snapshot g/{safety}/{v}")
        _assert_image(_snap_image(array, "g", "s1", v), s1[v], f"snapshot g/s1/{v}")
    listing = _snaps(array, "g")
    assert list(listing) == ["g/s1", f"g/{safety}"], listing
    assert listing[f"g/{safety}"]["seq"] >= listing["g/s1"]["seq"], listing
    # the rolled-back volumes are ordinary volumes again
    models = {v: bytearray(s1[v]) for v in "ab"}
    _write(array.image("a"), models["a"], [(2 * MiB, _nonzero(rng, 12345))])
    _assert_image(array.image("a"), models["a"], "volume a written after the rollback")
    _assert_image(_snap_image(array, "g", "s1", "a"), s1["a"], "snapshot g/s1/a after writing to a")
    diff = {d["volume"]: d["ranges"] for d in _json(array, "snapshot", "diff", "g", "s1", safety)}
    assert diff["a"] and diff["b"], diff

    out = _json(array, "snapshot", "clone", "g", "s1", "--as", "c")
    assert sorted(out["clones"]) == ["c-a", "c-b"], out
    _wait_path(array.image("c-a"), present=True)
    assert sorted(os.listdir(os.path.join(array.mnt, "volumes"))) == ["a", "b", "c-a", "c-b"]
    assert _json(array, "group", "show", "g")["volumes"] == ["a", "b"]  # clones join no group
    clones = {v: bytearray(s1[v]) for v in "ab"}
    for v in "ab":
        assert os.stat(array.image(f"c-{v}")).st_size == VOL
        _assert_image(array.image(f"c-{v}"), clones[v], f"clone c-{v}")
    _refused(array, ALREADY_EXISTS, "snapshot", "clone", "g", "s1", "--as", "c")

    # clones and their origins change independently of each other
    _write(array.image("c-a"), clones["a"], [(0, _nonzero(rng, 3 * MiB)), (60 * MiB, _nonzero(rng, 999))])
    _write(array.image("c-b"), clones["b"], [(3 * MiB + 1, _nonzero(rng, 100))])
    _write(array.image("a"), models["a"], [(10, _nonzero(rng, 70000))])
    _write(array.image("b"), models["b"], [(3 * MiB + 50, _nonzero(rng, 100))])
    for v in "ab":
        _assert_image(array.image(f"c-{v}"), clones[v], f"clone c-{v} after writes")
        _assert_image(array.image(v), models[v], f"volume {v} after writes")
        _assert_image(_snap_image(array, "g", "s1", v), s1[v], f"snapshot g/s1/{v} after writes")
    # a clone does not pin its origin snapshot's name: the snapshot can go, the clone keeps its data
    array.vstor("snapshot", "delete", "g", "s1")
    for v in "ab":
        _assert_image(array.image(f"c-{v}"), clones[v], f"clone c-{v} after deleting s1")
    array.vstor("volume", "delete", "c-b")
    _assert_image(array.image("c-a"), clones["a"], "clone c-a after deleting c-b")
    _assert_image(array.image("b"), models["b"], "volume b after deleting c-b")


# -- 4. ext4 under load ------------------------------------------------------------------------
class _Writer(threading.Thread):
    """Creates files in a mounted filesystem, fsyncing each (and its directory); when it has
    made ``max_files`` it keeps rewriting one churn file. ``done`` lists the files complete
    before a given moment, with their digests; they are never modified afterwards."""

    def __init__(self, root: str, seed: int, max_files: int = 600) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.rng = random.Random(seed)
        self.max_files = max_files
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.done: list[tuple[str, str]] = []
        self.churn_writes = 0
        self.error: BaseException | None = None

    def completed(self) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.done)

    def wait_for(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.completed()) + self.churn_writes < n:
            assert self.error is None, f"writer failed: {self.error!r}"
            assert time.monotonic() < deadline, f"writer made only {len(self.completed())} files"
            time.sleep(0.02)

    def run(self) -> None:
        try:
            dfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                i = 0
                while not self.stop_event.is_set():
                    if i < self.max_files:
                        self._one_file(dfd, i)
                    else:
                        self._churn()
                    i += 1
            finally:
                os.close(dfd)
        except BaseException as e:  # reported by the test
            self.error = e

    def _one_file(self, dfd: int, i: int) -> None:
        name = f"f{i:05d}"
        data = self.rng.randbytes(self.rng.randrange(1, 64 * 1024))
        fd = os.open(os.path.join(self.root, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            half = len(data) // 2  # two writes, so an unsynced file can be torn
            os.write(fd, data[:half])
            os.write(fd, data[half:])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(dfd)
        with self.lock:
            self.done.append((name, _sha(data)))

    def _churn(self) -> None:
        fd = os.open(os.path.join(self.root, "churn"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, self.rng.randbytes(256 * 1024), self.rng.randrange(16) * 256 * 1024)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.churn_writes += 1


def _check_files(root: str, files: list[tuple[str, str]], what: str) -> None:
    assert files, f"{what}: no files to check"
    for name, digest in files:
        path = os.path.join(root, name)
        assert os.path.exists(path), f"{what}: {name} (fsynced before the snapshot) is missing"
        assert _sha_file(path) == digest, f"{what}: {name} has the wrong content"


def test_ext4_snapshots_under_load(array, tmp_path):
    _make_group(array, "g", {"a": 128 * MiB, "b": VOL})
    _write(array.image("b"), None, [(0, os.urandom(MiB))])
    dev = array.attach("a")
    run(["mkfs.ext4", "-q", "-F", dev])
    mp = array.mount_fs(dev, tmp_path / "live")
    writer = _Writer(mp, seed=404)
    writer.start()
    try:
        writer.wait_for(40)

        # (a) frozen: a clean filesystem, no journal replay needed
        before = writer.completed()
        s = _json(array, "snapshot", "create", "g", "--name", "frozen", "--freeze", mp)
        assert s["name"] == "frozen", s
        assert run(["fsfreeze", "-u", mp], check=False).returncode != 0, "the CLI left the filesystem frozen"
        n = len(writer.completed())
        writer.wait_for(n + 10)  # the writer goes on after the thaw
        fdev = array.vstor("volume", "attach", "--snapshot", "g/frozen/a").stdout.strip()
        assert fdev.startswith("/dev/loop"), fdev
        assert run(["blockdev", "--getro", fdev]).stdout.strip() == "1"
        assert "needs_recovery" not in _ext4_features(fdev), "the frozen snapshot needs a journal replay"
        r = _fsck(fdev, "-fn")
        assert r.returncode == 0, f"e2fsck -fn on the frozen snapshot -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        fmp = array.mount_fs(fdev, tmp_path / "frozen", "ro,noload")
        _check_files(fmp, before, "frozen snapshot")
        array.umount_fs(fmp)
        array.vstor("volume", "detach", "--snapshot", "g/frozen/a")

        # (b) crash-consistent: the clone needs a journal replay, then is clean
        writer.wait_for(len(writer.completed()) + 20)
        before = writer.completed()
        array.vstor("snapshot", "create", "g", "--name", "crash")
        writer.wait_for(len(writer.completed()) + 10)
        out = _json(array, "snapshot", "clone", "g", "crash", "--as", "cc")
        assert sorted(out["clones"]) == ["cc-a", "cc-b"], out
        cdev = array.attach("cc-a")
        assert "needs_recovery" in _ext4_features(cdev), "a snapshot of a mounted ext4 should need a replay"
        r = _fsck(cdev, "-fy")
        assert r.returncode in (0, 1), f"e2fsck -fy on the clone -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        r = _fsck(cdev, "-fn")
        assert r.returncode == 0, f"e2fsck -fn after repair -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        cmp_ = array.mount_fs(cdev, tmp_path / "clone")
        _check_files(cmp_, before, "crash-consistent clone")
        # the clone is writable and independent of the live filesystem
        Path(cmp_, "clone-only").write_bytes(b"clone")
        assert not os.path.exists(os.path.join(mp, "clone-only"))
        array.umount_fs(cmp_)
        array.vstor("volume", "detach", "cc-a")
    finally:
        writer.stop_event.set()
        writer.join(timeout=60)
    assert not writer.is_alive(), "the writer did not stop"
    assert writer.error is None, f"the writer failed: {writer.error!r}"
    all_files = writer.completed()
    array.umount_fs(mp)
    r = _fsck(dev, "-fn")
    assert r.returncode == 0, f"e2fsck -fn on the live volume -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    mp = array.mount_fs(dev, tmp_path / "live", "ro")
    _check_files(mp, all_files, "live filesystem")
    array.umount_fs(mp)
    array.vstor("volume", "detach", "a")
    # the snapshots survived all of it
    assert list(_snaps(array, "g")) == ["g/frozen", "g/crash"]


# -- 5. restart and kill -9 --------------------------------------------------------------------
def _images(arr: Array, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """The sha256 of every snapshot image, by owner/snap/volume; snapshots named in ``skip``
    are left out unread (each image is 64 MiB through FUSE)."""
    out = {}
    for owner in sorted(os.listdir(os.path.join(arr.mnt, "snapshots"))):
        for snap in sorted(os.listdir(os.path.join(arr.mnt, "snapshots", owner))):
            if snap in skip:
                continue
            for vol in sorted(os.listdir(os.path.join(arr.mnt, "snapshots", owner, snap))):
                out[f"{owner}/{snap}/{vol}"] = _sha_file(_snap_image(arr, owner, snap, vol))
    return out


def _stable(listing: dict[str, dict]) -> dict[str, tuple]:
    return {k: (s["id"], s["kind"], s["seq"], s["created"], s["auto"],
                [(m["name"], m["id"], m["size"]) for m in s["volumes"]]) for k, s in listing.items()}


def test_snapshots_survive_restart_and_kill9(array):
    rng = random.Random(505)
    models = _make_group(array, "g", {"a": VOL, "b": VOL})
    _write(array.image("a"), models["a"], [(0, rng.randbytes(2 * MiB)), (33 * MiB + 1, rng.randbytes(MiB))])
    _write(array.image("b"), models["b"], [(7 * MiB, rng.randbytes(MiB))])
    array.vstor("snapshot", "create", "g", "--name", "s1")
    s1 = {v: bytes(m) for v, m in models.items()}
    _write(array.image("a"), models["a"], [(MiB, rng.randbytes(2 * MiB))])
    array.vstor("snapshot", "create", "g", "--name", "s2")
    s2 = {v: bytes(m) for v, m in models.items()}
    array.vstor("snapshot", "create", "b", "--name", "vb")  # a volume snapshot of a group member
    _write(array.image("b"), models["b"], [(7 * MiB + 100, rng.randbytes(100))])
    listing = _stable(_snaps(array))
    assert list(listing) == ["b/vb", "g/s1", "g/s2"], listing
    images = _images(array)
    assert len(images) == 5, images
    assert images["g/s1/a"] == _sha(s1["a"]) and images["g/s2/a"] == _sha(s2["a"]), "snapshot images"
    live = {v: _sha(bytes(m)) for v, m in models.items()}

    array.stop()
    array.start()
    assert _stable(_snaps(array)) == listing
    assert _images(array) == images
    for v in "ab":
        assert _sha(read_direct(array.image(v))) == live[v], f"volume {v} after restart"
    assert _json(array, "group", "show", "g")["volumes"] == ["a", "b"]

    # kill -9 right after 'snapshot create' returned; the writes before it were never fsynced
    extra = rng.randbytes(3 * MiB)
    fd = os.open(array.image("a"), os.O_RDWR)
    try:
        assert os.pwrite(fd, extra, 20 * MiB + 3) == len(extra)
        models["a"][20 * MiB + 3 : 20 * MiB + 3 + len(extra)] = extra
        s3 = _json(array, "snapshot", "create", "g", "--name", "s3")
        array.kill9()
    finally:
        try:
            os.close(fd)
        except OSError:
            pass  # the daemon is gone
    array.start()
    after = _stable(_snaps(array))
    assert list(after) == ["b/vb", "g/s1", "g/s2", "g/s3"], list(after)
    assert after["g/s3"] == _stable({"g/s3": s3})["g/s3"], (after["g/s3"], s3)
    assert {k: v for k, v in after.items() if k != "g/s3"} == listing
    for v in "ab":
        _assert_image(_snap_image(array, "g", "s3", v), models[v], f"snapshot g/s3/{v} after kill -9")
    assert _images(array, skip=("s3",)) == images

    # rollback and clone, then writes to both, then kill -9 again
    safety = _json(array, "snapshot", "rollback", "g", "s1")["safety_snapshot"]
    rolled = {v: bytearray(s1[v]) for v in "ab"}
    _write(array.image("a"), rolled["a"], [(5 * MiB + 9, _nonzero(rng, 70000))])
    array.vstor("snapshot", "clone", "g", "s2", "--as", "k")
    _wait_path(array.image("k-a"), present=True)
    clone = bytearray(s2["a"])
    _write(array.image("k-a"), clone, [(40 * MiB, _nonzero(rng, MiB))])
    array.kill9()
    array.start()
    _assert_image(array.image("a"), rolled["a"], "volume a (rolled back to s1, then written) after kill -9")
    _assert_image(array.image("b"), rolled["b"], "volume b (rolled back to s1) after kill -9")
    _assert_image(array.image("k-a"), clone, "clone k-a after kill -9")
    _assert_image(array.image("k-b"), s2["b"], "clone k-b after kill -9")
    for v in "ab":
        _assert_image(_snap_image(array, "g", safety, v), models[v], f"safety snapshot g/{safety}/{v} after kill -9")
    assert list(_snaps(array)) == ["b/vb", "g/s1", "g/s2", "g/s3", f"g/{safety}"]
    assert _images(array, skip=("s3", safety)) == images
    array.stop()
    r = array.vstor("pool", "check", array.pool, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "clean" in r.stdout, r.stdout


# -- 7. snapshot policies ----------------------------------------------------------------------
def test_snapshot_policy_takes_automatic_snapshots(array):
    models = _make_group(array, "g", {"a": VOL})
    _write(array.image("a"), models["a"], [(MiB, random.Random(707).randbytes(MiB))])
    _refused(array, 2, "snapshot", "policy", "set", "g", "--every", "30s", "--keep-last", "2")
    _refused(array, 2, "snapshot", "policy", "set", "g", "--every", "15m")  # nothing to keep
    _refused(array, 2, "snapshot", "policy", "set", "g", "--every", "soon", "--keep-last", "2")
    _refused(array, NOT_FOUND, "snapshot", "policy", "set", "nosuch", "--every", "15m", "--keep-last", "2")
    assert _json(array, "snapshot", "policy", "list") == []
    assert _snaps(array) == {}

    r = _json(array, "snapshot", "policy", "set", "g", "--every", "15m", "--keep-last", "2")
    base = r["policy"].pop("base")  # each member's written bytes when the policy was set
    assert len(base) == 1 and list(base.values())[0] >= MiB, r  # the 1 MiB written above
    assert r["policy"] == {"every": 900, "keep_last": 2, "keep_daily": 0, "after_written": 0, "min_interval": 60,
                           "pre": "", "post": "", "hook_timeout": 60}, r
    r["policy"]["base"] = base
    policies = _json(array, "snapshot", "policy", "list")
    assert [(p["owner"], p["kind"], p["every"], p["keep_last"]) for p in policies] == [("g", "group", 900, 2)]
    assert _json(array, "group", "show", "g")["policy"] == r["policy"]
    # none taken yet, so one is due at once: the maintenance loop (1 s) takes it
    deadline = time.monotonic() + 15
    while not _snaps(array, "g") and time.monotonic() < deadline:
        time.sleep(0.2)
    autos = _snaps(array, "g")
    assert len(autos) == 1, autos
    auto = next(iter(autos.values()))
    assert auto["auto"] is True and auto["name"].startswith("auto-"), auto
    snap = bytes(models["a"])
    _assert_image(_snap_image(array, "g", auto["name"], "a"), snap, "automatic snapshot")
    _write(array.image("a"), models["a"], [(0, _nonzero(random.Random(708), 4096))])
    time.sleep(1.5)  # more than one maintenance tick: the next one is due in 15 minutes
    assert list(_snaps(array, "g")) == [f"g/{auto['name']}"]

    manual = _json(array, "snapshot", "create", "g")  # default name: the UTC time
    assert re.fullmatch(r"\d{8}-\d{6}(\.\d+)?", manual["name"]), manual
    assert manual["auto"] is False

    array.stop()
    array.start()
    assert [p | {"last_run": None} for p in _json(array, "snapshot", "policy", "list")] == [
        p | {"last_run": None} for p in policies]
    time.sleep(1.5)
    assert list(_snaps(array, "g")) == [f"g/{auto['name']}", f"g/{manual['name']}"]
    _assert_image(_snap_image(array, "g", auto["name"], "a"), snap, "automatic snapshot after restart")

    r = _json(array, "snapshot", "policy", "clear", "g")
    assert r["policy"] is None, r
    assert _json(array, "snapshot", "policy", "list") == []
    assert _json(array, "group", "show", "g")["policy"] is None
    assert list(_snaps(array, "g")) == [f"g/{auto['name']}", f"g/{manual['name']}"]  # its snapshots stay


# -- 6. a snapshot on a read-only loop device --------------------------------------------------
def test_snapshot_attach_is_read_only(array):
    rng = random.Random(606)
    array.create("v", str(VOL))
    model = bytearray(VOL)
    _write(array.image("v"), model, [(0, rng.randbytes(MiB)), (8 * MiB, rng.randbytes(MiB))])
    array.vstor("snapshot", "create", "v", "--name", "vs")
    snap = bytes(model)
    _write(array.image("v"), model, [(0, _nonzero(rng, 4096))])

    r = _json(array, "volume", "attach", "--snapshot", "v/vs/v")
    dev = r["device"]
    assert dev.startswith("/dev/loop") and r["read_only"] is True, r
    assert run(["blockdev", "--getro", dev]).stdout.strip() == "1"
    assert Path(f"/sys/block/{os.path.basename(dev)}/ro").read_text().strip() == "1"
    assert read_direct(dev, 0, 2 * MiB) == snap[: 2 * MiB]
    assert read_direct(dev, 8 * MiB, MiB) == snap[8 * MiB : 9 * MiB]

    buf = mmap.mmap(-1, 4096)
    buf.write(b"\x5a" * 4096)
    try:
        with pytest.raises(OSError) as ei:
            fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
            try:
                os.pwritev(fd, [buf], 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        assert ei.value.errno in (errno.EPERM, errno.EROFS, errno.EACCES, errno.EIO), ei.value
        # even with the block device's read-only flag cleared the data cannot change
        subprocess.run(["blockdev", "--setrw", dev], capture_output=True)
        try:
            fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
            try:
                os.pwritev(fd, [buf], 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
    finally:
        buf.close()
    _assert_image(_snap_image(array, "v", "vs", "v"), snap, "snapshot v/vs/v")
    assert read_direct(dev, 0, MiB) == snap[:MiB]
    _assert_image(array.image("v"), model, "volume v")
    _refused(array, BUSY, "snapshot", "delete", "v", "vs")
    array.vstor("volume", "detach", "--snapshot", "v/vs/v")
    assert not os.path.exists(f"/sys/block/{os.path.basename(dev)}/loop/backing_file")
    array.vstor("snapshot", "delete", "v", "vs")
    assert _snaps(array) == {}


# -- 8. a group snapshot is one cut across its volumes -----------------------------------------
REC = 4096


def _records(data: bytes) -> int:
    """How many records 1..n the log holds, asserting they form a prefix with nothing after."""
    n = 0
    for k in range(len(data) // REC):
        rec = data[k * REC : (k + 1) * REC]
        if rec == bytes(REC):
            break
        assert rec == struct.pack("<Q", k + 1) * (REC // 8), f"record {k + 1} is wrong"
        n = k + 1
    rest = data[n * REC :]
    assert rest == bytes(len(rest)), f"data after record {n}: the log is not a prefix"
    return n


def test_group_snapshot_is_one_cut(array):
    region = 32 * MiB
    _make_group(array, "g", {"a": VOL, "b": VOL})
    stop = threading.Event()
    errors: list[BaseException] = []
    written = [0]

    def writer() -> None:
        fa = os.open(array.image("a"), os.O_RDWR)
        fb = os.open(array.image("b"), os.O_RDWR)
        try:
            for i in range(1, region // REC + 1):  # record i to a, then to b: b never runs ahead of a
                if stop.is_set():
                    break
                rec = struct.pack("<Q", i) * (REC // 8)
                assert os.pwrite(fa, rec, (i - 1) * REC) == REC
                assert os.pwrite(fb, rec, (i - 1) * REC) == REC
                written[0] = i
        except BaseException as e:  # reported below
            errors.append(e)
        finally:
            os.close(fa)
            os.close(fb)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    cuts = []
    try:
        for k in range(8):
            while written[0] < 200 * (k + 1) and t.is_alive():
                time.sleep(0.01)
            # Over the control socket, not the CLI: the writer must still be running after 8 cuts.
            s = call(layout(array.pool)["socket"], "snapshot.create", owner="g", name=f"cut{k}")
            cuts.append((s["name"], s["seq"]))
    finally:
        stop.set()
        t.join(timeout=60)
    assert not errors, errors
    assert written[0] < region // REC, "the writer finished before the snapshots: nothing was tested"
    seqs = [seq for _n, seq in cuts]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), cuts
    for name, seq in cuts:
        na = _records(read_direct(_snap_image(array, "g", name, "a"), 0, region))
        nb = _records(read_direct(_snap_image(array, "g", name, "b"), 0, region))
        assert nb in (na - 1, na), f"snapshot {name}: a holds records 1..{na}, b 1..{nb}: not one cut"
        assert seq == na + nb, f"snapshot {name}: seq {seq}, but it holds {na} + {nb} writes"
