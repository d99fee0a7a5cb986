"""Disc sides on a local pool (issue 29 moved them behind the pool backend): a pool written by
earlier releases keeps working, and every file stays where and as it was
(``POOL/media/LIB/BARCODE.sideN.img``, sparse, and the ``.json`` state beside it, both mode
0600, the state's bytes ``json.dumps`` of the side state); the shelf moves them as files; ``pool
migrate``'s placement copies an image's data extents only (a hole stays a hole). In process,
no root."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from vstor.media.manager import MediaManager
from vstor.store.backend.local import LocalBackend
from vstor.store.migrate.placement import data_extents, place_other_file

MiB = 1 << 20


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_file())


def test_a_local_pool_of_an_earlier_release_keeps_its_discs_as_files(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    mgr = MediaManager(str(pool))
    mgr.create_library("jb", "optical", 4, 1, 1)
    mgr.create_media("jb", ["DISC01"], type_="BD-R", capacity=64 * MiB)
    mgr.create_media("jb", ["RE0001"], type_="BD-RE", capacity=64 * MiB)
    mgr.close()
    lib = pool / "media" / "jb"
    first = os.urandom(10240)  # a session an earlier release wrote: its image and state files, as it left them
    fd = os.open(lib / "DISC01.side0.img", os.O_RDWR | os.O_CREAT, 0o600)
    os.pwrite(fd, first, 0)
    os.close(fd)
    (lib / "DISC01.side0.json").write_bytes(json.dumps({"state": "appendable", "sessions": [[0, 10240]],
                                                        "nwa": 10240}).encode())
    os.chmod(lib / "DISC01.side0.json", 0o600)

    mgr = MediaManager(str(pool))
    assert mgr.show("jb", "DISC01")["sides"][0]["sessions"] == [[0, 10240]]
    mgr.load("jb", "DISC01", 0)
    disc = mgr.drive("jb", 0)
    assert disc.read(0, 10240) == first and disc.read(MiB, 100) == bytes(100)
    disc.write(10240, b"s" * 4096)
    mgr.unload("jb", 0)  # closes the session: the state file is replaced
    assert (lib / "DISC01.side0.json").read_bytes() == json.dumps(
        {"state": "appendable", "sessions": [[0, 10240], [10240, 14336]], "nwa": 14336}).encode()
    assert (lib / "DISC01.side0.img").read_bytes() == first + b"s" * 4096
    mgr.load("jb", "RE0001", 0)
    mgr.drive("jb", 0).write(60 * MiB, b"far".ljust(4096, b"f"))  # rewritable: a hole before it
    mgr.unload("jb", 0)
    img = lib / "RE0001.side0.img"
    assert img.stat().st_size == 60 * MiB + 4096 and img.stat().st_blocks * 512 < MiB  # sparse, as always
    used = {r["barcode"]: r["used"] for r in mgr.inventory("jb") if r["barcode"]}
    assert used["RE0001"] == img.stat().st_blocks * 512
    assert _files(lib) == ["DISC01.side0.img", "DISC01.side0.json", "RE0001.side0.img", "RE0001.side0.json"]
    for name in _files(lib):
        assert stat.S_IMODE((lib / name).stat().st_mode) == 0o600, name
    mgr.export("jb", "DISC01")
    mgr.import_("jb", "open")  # the shelf: the same files, under LIB/shelf
    assert _files(lib / "shelf") == ["DISC01.json", "DISC01.side0.img", "DISC01.side0.json"]
    assert (lib / "shelf" / "DISC01.side0.img").read_bytes() == first + b"s" * 4096
    mgr.import_("jb", "close")
    assert _files(lib / "shelf") == [] and "DISC01.side0.img" in _files(lib)
    assert mgr.show("jb", "DISC01")["sides"][0]["next_writable_address"] == 14336
    mgr.delete_library("jb")
    assert not lib.exists()
    mgr.close()


def test_migrate_placement_copies_a_disc_image_s_data_and_keeps_its_holes(tmp_path: Path) -> None:
    src = tmp_path / "src.img"
    fd = os.open(src, os.O_RDWR | os.O_CREAT, 0o600)
    os.pwrite(fd, b"a" * 8192, 0)
    os.pwrite(fd, b"b" * 4096, 40 * MiB)
    os.ftruncate(fd, 50 * MiB)  # ends in a hole
    os.close(fd)
    extents, size = data_extents(str(src))
    assert size == 50 * MiB and sum(n for _o, n in extents) < MiB  # the holes are skipped
    state = tmp_path / "dest"
    placed = place_other_file(LocalBackend(str(state)), str(state), "media/jb/D.side0.img", str(src))
    out = state / "media" / "jb" / "D.side0.img"
    assert placed.where == str(out) and placed.source is not None
    assert out.read_bytes() == src.read_bytes() and out.stat().st_blocks * 512 < MiB
    assert list(placed.read_back()) == list(placed.source())  # what pool migrate compares (sha256 of both)
    with open(out, "r+b") as f:
        f.seek(40 * MiB + 5)
        f.write(b"X")
    assert list(placed.read_back()) != list(placed.source())
