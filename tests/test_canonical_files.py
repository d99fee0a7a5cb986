"""Checksummed JSON files are read only in the exact form vstor writes them.

Their checksums cover the parsed content, so a damaged byte that leaves the content the same
(a space turned into a tab or a newline) passed unseen: the damage soak found one in
meta/consumers.json.copy that `pool check` did not report. Each loader now also compares the
file with its own encoding of what it read. Each case here writes a file the real way, changes
one whitespace byte, and expects the loader (or pool check) to name the file.
"""

from __future__ import annotations

import os

import pytest

from vstor import checkedjson
from vstor.errors import CorruptData, FormatError
from vstor.media.manager import MediaManager
from vstor.nbd import exportfile
from vstor.nbd.exportfile import ExportSpec
from vstor.replication.pairstate import Pair
from vstor.replication.registry import Registry
from vstor.store.backend.poolfiles import local_files
from vstor.store.journal.consumers import COPY, Consumers, consumer_problems


def _respace(path: str) -> None:
    """Turn the file's first space into a tab: same JSON content, other bytes."""
    with open(path, "rb") as f:
        raw = f.read()
    assert b" " in raw, path
    with open(path, "wb") as f:
        f.write(raw.replace(b" ", b"\t", 1))


def test_consumer_positions(tmp_path):
    meta, files = str(tmp_path), local_files(str(tmp_path))
    c = Consumers(files)
    c.register("backup", (3, 4096))
    assert consumer_problems(files) == []
    _respace(os.path.join(meta, COPY))
    problems = consumer_problems(files)
    assert len(problems) == 1 and COPY in problems[0] and "form vstor writes" in problems[0], problems
    assert Consumers(files).positions() == {"backup": (3, 4096)}  # the other copy still serves


def test_nbd_exports(tmp_path):
    meta = local_files(str(tmp_path))
    exportfile.save(meta, [ExportSpec("e1", "v", None, False, (), False)])
    assert [s.name for s in exportfile.load(meta)] == ["e1"]
    _respace(os.path.join(tmp_path, exportfile.FILE))
    with pytest.raises(FormatError, match="form vstor writes"):
        exportfile.load(meta)


def test_pair_file(tmp_path):
    reg = Registry(local_files(str(tmp_path)))
    reg.save(Pair("g", "127.0.0.1:7450", "site-b", "g", "primary"))
    assert list(reg.load_all()) == ["g"]
    _respace(os.path.join(tmp_path, "pairs", "g.json"))
    with pytest.raises(FormatError, match="form vstor writes"):
        reg.load_all()


def test_library_file(tmp_path):
    pool = str(tmp_path)
    MediaManager(pool).create_library("lib", "tape", 4, 1, 1)
    assert list(MediaManager(pool).libs) == ["lib"]
    _respace(os.path.join(pool, "media", "lib.json"))
    with pytest.raises(FormatError, match="form vstor writes"):
        MediaManager(pool)


def test_governance_state_file(tmp_path):
    path, files = str(tmp_path / "admins.json"), local_files(str(tmp_path))
    checkedjson.save(files, "admins.json", {"admins": {"ann": {}}}, 1)
    assert checkedjson.load(files, "admins.json", {}, 1, "x")["admins"] == {"ann": {}}
    _respace(path)
    with pytest.raises(CorruptData, match="form"):
        checkedjson.load(files, "admins.json", {}, 1, "x")
