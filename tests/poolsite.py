"""Pools on either backend, for the suites that run on both (issue 29: whole-suite parity).

A test module opts in with ``pytestmark = pytest.mark.usefixtures("pool_backend")``: each of
its tests then runs twice, ``[local]`` on a pool directory of files and ``[rados]`` (marked
``rados``: ``make test-rados``, the session's one-node cluster of tests/cephlab.py) on a pool
whose segments, superblock and checkpoints are objects in RADOS. The test itself does not
change: ``poolkit.make_pool`` makes the running variant's kind of pool (for RADOS, a state
directory with its ``rados.json`` stub, which ``Store.open`` follows to the cluster), and the
``seg_*`` / ``blob_*`` helpers of poolkit read and damage a pool's segments and blobs through
its backend, the same on both.

A test about something only a local pool has (a file's preallocated window, ENOSPC from the
filesystem, an mmap) carries ``@pytest.mark.local_only("why")``: its RADOS variant is skipped
with that reason. A test of such a module that makes no pool at all (pure logic: a picking rule,
a hook runner) carries ``@pytest.mark.no_pool("why")``: its RADOS variant would run the very
same code, so it is not collected (:func:`drop_no_pool_variants`, make test-rados's time). A
[rados] variant that passes without making a RADOS pool fails at teardown, saying so: it tested
nothing its [local] twin did not.

Each RADOS pool gets its own prefix in cephlab's TEST_POOL; every object in a namespace of
that prefix (PREFIX, PREFIX/journal, PREFIX/media, ...) is removed after the test, pass or
fail (memstore keeps them in RAM).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cephlab import CLIENT_TIMEOUT, TEST_POOL, CephLab, remove_prefixes
from harness import Array

__all__ = ["BACKENDS", "RadosPools", "active", "drop_no_pool_variants", "make_array", "note_outcome", "pool_backend"]

BACKENDS = ["local", pytest.param("rados", marks=pytest.mark.rados)]


class RadosPools:
    """Makes vstor pools on the test cluster, each under a fresh prefix, and removes them."""

    def __init__(self, lab: CephLab) -> None:
        self.lab = lab
        self.prefixes: list[str] = []

    def location(self) -> str:
        prefix = f"p-{uuid.uuid4().hex[:12]}"
        self.prefixes.append(prefix)
        return f"rados://{TEST_POOL}/{prefix}"

    def make_pool(self, directory: str, **kw: object) -> str:
        """A RADOS pool with the options of superblock.init_pool, served from the state
        directory ``directory`` (its stub points at the new location)."""
        from vstor.store.backend.location import open_backend
        from vstor.store.backend.stub import write_stub
        from vstor.store.superblock import init_backend_pool

        location = self.location()
        os.makedirs(directory, exist_ok=True)  # and its parent, where make_pool puts a key file
        with open_backend(location, ceph_conf=str(self.lab.conf), timeout=CLIENT_TIMEOUT) as be:
            init_backend_pool(be, **kw)  # type: ignore[arg-type]
        write_stub(directory, location, str(self.lab.conf), None)
        return directory

    def cleanup(self) -> None:
        if self.prefixes:
            remove_prefixes(self.lab, self.prefixes)  # PREFIX, PREFIX/journal, PREFIX/media, ...
        self.prefixes.clear()


def make_array(base: Path, **init_opts: str | bool) -> Array:
    """An Array (tests/harness.py) on the running variant's kind of pool: conftest's
    array_factory makes its arrays with this. On RADOS the pool directory is a state directory
    whose stub points at a fresh location (so its control socket path is as short as a local
    pool's); ``init_opts`` are pool init's options (segment size 16M unless given)."""
    site = active()
    if site is None:
        return Array(base, **init_opts)  # type: ignore[arg-type]
    from vstor.units import parse_size

    key_file = init_opts.pop("key_file", None)
    kw: dict[str, object] = {"segment_size": parse_size(str(init_opts.pop("segment_size", "16M")), "segment size")}
    if "chunk_size" in init_opts:
        kw["chunk_size"] = parse_size(str(init_opts.pop("chunk_size")), "chunk size")
    if "compress" in init_opts:
        kw["compress"] = init_opts.pop("compress")
    if init_opts.pop("encrypt", False):
        kw.update(encrypt=True, key_file=key_file)
    assert not init_opts, f"pool init options not handled for RADOS pools here: {init_opts}"
    arr = Array.__new__(Array)  # what Array.__init__ sets, with the pool made on RADOS instead
    arr.base, arr.pool, arr.mnt = base, str(base / "pool"), str(base / "mnt")
    arr.env = dict(os.environ, VSTOR_POOL=arr.pool)
    arr.mounts, arr.netns, arr.start_args = [], None, []
    arr.key_file = key_file  # type: ignore[assignment]
    site.make_pool(arr.pool, **kw)
    return arr


_ACTIVE: list[RadosPools] = []


def active() -> RadosPools | None:
    """The RADOS pool maker of the running test's [rados] variant, or None (local pools)."""
    return _ACTIVE[-1] if _ACTIVE else None


CALL_FAILED = pytest.StashKey[bool]()


def note_outcome(item: pytest.Item, report: pytest.TestReport) -> None:
    """conftest's pytest_runtest_makereport: whether the test's call failed (or was skipped),
    for pool_backend's check at teardown."""
    if report.when == "call":
        item.stash[CALL_FAILED] = not report.passed


def drop_no_pool_variants(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the [rados] variant of each test marked ``no_pool``: it makes no pool, so it runs
    exactly the code of its [local] twin."""
    dropped = [it for it in items if it.get_closest_marker("no_pool") is not None
               and getattr(it, "callspec", None) is not None and it.callspec.params.get("pool_backend") == "rados"]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [it for it in items if not any(it is d for d in dropped)]


@pytest.fixture(params=BACKENDS)
def pool_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """"local" or "rados": the kind of pool poolkit.make_pool makes in this test."""
    if request.param == "local":
        yield "local"
        return
    marker = request.node.get_closest_marker("local_only")
    if marker is not None:
        pytest.skip(f"local pools only: {marker.args[0] if marker.args else 'about local files'}")
    lab: CephLab = request.getfixturevalue("ceph_lab")
    pools = RadosPools(lab)
    _ACTIVE.append(pools)
    try:
        yield "rados"
    finally:
        _ACTIVE.remove(pools)
        made = bool(pools.prefixes)
        pools.cleanup()
    if not made and not request.node.stash.get(CALL_FAILED, True):
        pytest.fail("this [rados] variant made no RADOS pool, so it ran just what its [local] twin runs: "
                    "mark the test @pytest.mark.no_pool(\"why\") (tests/poolsite.py)", pytrace=False)
