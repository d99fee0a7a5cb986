"""vm/ceph.py's cluster configuration for each store kind (no Ceph needed: the bring-up itself
runs in make test-rados, memstore, and tools/bench_rados.py, BlueStore)."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from tools.benchlib.ceph import CLIENT_CONF, BenchCluster
from vm.ceph import BLOCK_BYTES, MEMSTORE_BYTES, Cluster


def _parse(text: str) -> configparser.RawConfigParser:
    conf = configparser.RawConfigParser(delimiters=("=",), interpolation=None)
    conf.read_string(text)
    return conf


def test_memstore_and_bluestore_confs_differ_only_in_the_store_and_client_sections(tmp_path: Path) -> None:
    mem = _parse(Cluster(tmp_path / "m").render_conf(40000, "f"))
    blue = _parse(BenchCluster(tmp_path / "b").cluster.render_conf(40000, "f"))
    assert mem["osd"]["osd objectstore"] == "memstore" and mem["osd"]["memstore device bytes"] == str(MEMSTORE_BYTES)
    assert "bluestore block size" not in mem["osd"] and not mem.has_section("client")
    assert blue["osd"]["osd objectstore"] == "bluestore" and blue["osd"]["bluestore block size"] == str(BLOCK_BYTES)
    assert "memstore device bytes" not in blue["osd"]
    assert dict(blue["client"]) == dict(_parse("[client]\n" + CLIENT_CONF)["client"]) == {
        "rbd cache": "false", "admin socket": ""}
    for conf, d in ((mem, tmp_path / "m"), (blue, tmp_path / "b")):
        g = conf["global"]
        assert g["mon host"] == "v2:127.0.0.1:40000" and g["ms bind port min"] == "40001"
        assert g["mon mgr digest period"] == "1" and g["paxos propose interval"] == "0.1"
        assert g["pid file"] == f"{d.resolve()}/run/$name.pid"  # down() finds the daemons by these

    def same(conf: configparser.RawConfigParser, d: Path) -> dict[str, str]:
        return {k: v.replace(str(d.resolve()), "DIR") for k, v in conf["global"].items()}
    assert same(mem, tmp_path / "m") == same(blue, tmp_path / "b")  # the same cluster apart from its OSD


def test_an_unknown_store_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="memstore, bluestore"):
        Cluster(tmp_path, "filestore")
