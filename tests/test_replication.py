"""Replication between two arrays in the DR lab: copy, steady state, faults, roles."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from replkit import Sites, drained, make_sites, same_images, status, teardown, wait_for  # noqa: E402

pytestmark = pytest.mark.root


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Sites]:
    made: list = []
    try:
        yield make_sites(tmp_path, made)
    finally:
        teardown(made)


def _write(path: str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_initial_copy_then_steady_replication(sites: Sites):
    a, b = sites.a, sites.b
    for v in ("orders", "payments"):
        a.create(v, "64M")
    a.vstor("group", "create", "g", "--volumes", "orders,payments")
    _write(a.image("orders"), 0, os.urandom(3 << 20))
    _write(a.image("payments"), 40 << 20, os.urandom(1 << 20))
    sites.pair("g")
    st = status(a, "g")
    assert st["copy"]["total"] == 4 << 20  # only allocated data
    for i in range(20):
        _write(a.image("orders"), i * 65536, os.urandom(4096))
        _write(a.image("payments"), i * 8192, os.urandom(8192))
    wait_for(lambda: drained(a), 60, "the journal drains")
    same_images(a, b, ["orders", "payments"])
    r = b.vstor("volume", "list", "--json")
    assert "orders" in r.stdout
