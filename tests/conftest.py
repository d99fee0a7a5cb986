from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The daemon's FUSE library (vstor.fuse.options.select_library), chosen before any test module
# imports mfusepy: whichever imports it first fixes the library for the whole session.
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
sys.path.insert(0, os.path.dirname(__file__))
from cephlab import ceph_lab, rados_location  # noqa: E402,F401  (RADOS tests: one cluster per session)
from harness import Array  # noqa: E402
from poolsite import drop_no_pool_variants, make_array, note_outcome, pool_backend  # noqa: E402,F401  (suites on both backends: tests/poolsite.py)
from radoshosts import host2_client, short_dir  # noqa: E402,F401  (RADOS tests' second host, short paths)


def _can_run_arrays() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/fuse") or not os.path.exists("/dev/loop-control"):
        return "needs /dev/fuse and loop devices"
    if not shutil.which("fusermount3"):
        return "needs fusermount3 (run 'make setup')"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = _can_run_arrays()
    if why:
        for item in items:
            if "root" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=why))
    drop_no_pool_variants(config, items)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    note_outcome(item, outcome.get_result())


@pytest.fixture
def array_factory(tmp_path: Path) -> Iterator:
    """Make arrays under tmp_path; every one is torn down after the test, pass or fail."""
    made: list[Array] = []

    def make(name: str = "a", **init_opts: str) -> Array:
        arr = make_array(tmp_path / name, **init_opts)  # on RADOS in a pool_backend test's [rados] variant
        made.append(arr)
        return arr

    yield make
    for arr in made:
        arr.cleanup()


@pytest.fixture
def array(array_factory) -> Array:
    arr = array_factory()
    arr.start()
    return arr

