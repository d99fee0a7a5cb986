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
from vstor.store.backend.statefiles import local_files
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


# -- the one sealed-JSON helper writes what each file's own encoder wrote before ----------------
def _old_forms(doc: dict) -> dict[str, bytes]:
    """Each file's encoder as it was before checkedjson.Seal (written out here, independently)."""
    import hashlib
    import json

    import xxhash

    def xxh(d: dict) -> str:
        return xxhash.xxh3_64_hexdigest(json.dumps(d, sort_keys=True).encode())

    compact = hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    plain = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    return {
        "governance": json.dumps({**doc, "checksum": compact}, sort_keys=True, indent=1).encode(),
        "consumers": json.dumps({**doc, "checksum": xxh(doc)}, sort_keys=True).encode(),
        "pairs+exports": (json.dumps({**doc, "checksum": xxh(doc)}, indent=2, sort_keys=True) + "\n").encode(),
        "library": (json.dumps({**doc, "checksum": xxh(doc)}, indent=1) + "\n").encode(),
        "keys": (json.dumps({**doc, "checksum": plain}, indent=1, sort_keys=True) + "\n").encode(),
    }


def test_seals_keep_each_files_bytes(tmp_path):
    from vstor.backup.keys import SEAL as KEYS
    from vstor.media.manager import SEAL as LIBRARY
    from vstor.nbd.exportfile import SEAL as EXPORTS
    from vstor.replication.registry import SEAL as PAIRS
    from vstor.store.journal.consumers import SEAL as CONSUMERS

    doc = {"version": 1, "zeta": [1, 2.5, None], "alpha": {"b": "é", "a": True}, "format": "x"}
    old = _old_forms(doc)
    new = {"governance": checkedjson.STATE.seal(doc), "consumers": CONSUMERS.seal(doc),
           "pairs+exports": PAIRS.seal(doc), "library": LIBRARY.seal(doc), "keys": KEYS.seal(doc)}
    assert EXPORTS == PAIRS
    assert new == old
    for name, raw in new.items():  # each reads back, checksum included, and refuses a changed byte
        seal = {"governance": checkedjson.STATE, "consumers": CONSUMERS, "pairs+exports": PAIRS,
                "library": LIBRARY, "keys": KEYS}[name]
        assert {k: v for k, v in seal.unseal(raw).items() if k != "checksum"} == doc
        with pytest.raises(checkedjson.BadSeal):
            seal.unseal(raw.replace(b"true", b"false"))
    files = local_files(str(tmp_path))
    checkedjson.save(files, "s.json", doc, 1)
    assert (tmp_path / "s.json").read_bytes() == old["governance"]
    assert os.stat(tmp_path / "s.json").st_mode & 0o777 == 0o600
