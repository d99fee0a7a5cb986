"""Backup on-media format (vstor/backup/media/tapefile.py) and tape I/O (vstor/backup/media/mediaio.py), in-process:
round trips through a TapeDrive over temporary cartridges, spanning, sealing, damage, and GNU tar restores."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vstor.backup.media import mediaio as mio
from vstor.backup.media import tapefile as tpf
from vstor.errors import CorruptData, FormatError, UsageError
from vstor.media import tapedrive as td
from vstor.media.cartridge import Cartridge

MIB = 1 << 20
KEY = bytes(range(32))
TAR = shutil.which("tar")
needs_tar = pytest.mark.skipif(TAR is None, reason="GNU tar is not installed")


# -- helpers -------------------------------------------------------------------------------------
@pytest.fixture
def carts(tmp_path: Path) -> Iterator:
    """Make cartridges (uncompressed, so sizes are exact) and drives over them; all closed and removed after."""
    made: list[Cartridge] = []

    def make(code: str = "BK0001L9", cap: int = 256 * MIB, ew: int = 0) -> td.TapeDrive:
        c = Cartridge(str(tmp_path / f"{code}.tape"), code, cap, compress=False)
        made.append(c)
        return td.TapeDrive(c, 0x60, True, False, 2 * MIB, ew_bytes=ew)

    yield make
    for c in made:
        c.close()
        os.unlink(c.path)


def _volumes(seed: int = 1) -> tuple[list[tpf.VolumeSource], dict[str, bytes]]:
    """Two 8 MiB images with a few extents of random data (one unaligned), the rest holes."""
    rng = random.Random(seed)
    layouts = {"disk0": [(0, 4096), (1 * MIB, 2 * MIB + 700), (7 * MIB, 64 * 1024)],
               "disk1": [(512 * 1024, 1 * MIB), (8 * MIB - 4096, 4096)]}
    vols, images = [], {}
    for name, extents in layouts.items():
        img = bytearray(8 * MIB)
        for off, n in extents:
            img[off : off + n] = rng.randbytes(n)
        images[name] = bytes(img)
        vols.append(tpf.VolumeSource(name, len(img), extents, lambda o, n, b=images[name]: b[o : o + n]))
    return vols, images


def _header(job: int = 7, part: int = 0, level: str = "full", key_id: int | None = None,
            barcode: str = "BK0001L9") -> tpf.PartHeader:
    return tpf.PartHeader(job, part, "nightly", level, "pool/vol-group", "snap-1", 1700000000.5,
                          None if level == "full" else 6, key_id,
                          [{"name": "disk0", "size": 8 * MIB}, {"name": "disk1", "size": 8 * MIB}],
                          "c0ffee-uuid", barcode)


def _write_job(drive: td.TapeDrive, next_drive=None, job: int = 7, key: bytes | None = None, seed: int = 1,
               piece: int = 100_000) -> tuple[list[mio.PartPlace], bytes, dict[str, bytes]]:
    """Write one job; returns the places, the exact stream and the images."""
    vols, images = _volumes(seed)
    stream = b"".join(tpf.pax_stream("pool/vol-group", vols, {"job": str(job), "snapshot": "snap-1"}))
    w = mio.TapeWriter(drive, next_drive or (lambda: pytest.fail("unexpected cartridge change")),
                       lambda part, code: _header(job, part, key_id=1 if key else None, barcode=code).encode(),
                       key=key, job=job)
    for i in range(0, len(stream), piece):  # odd write sizes: the writer must re-cut records
        w.write(stream[i : i + piece])
    return w.close(), stream, images


def _restore(chunks: Iterator[bytes], images: dict[str, bytes]) -> dict:
    got = {name: bytearray(len(img)) for name, img in images.items()}

    def apply(volume: str, offset: int, data: bytes) -> None:
        assert len(data) <= tpf.PIECE
        got[volume][offset : offset + len(data)] = data

    manifest = tpf.read_stream(chunks, apply)
    assert {k: bytes(v) == images[k] for k, v in got.items()} == dict.fromkeys(images, True)
    return manifest


def _raw_file(drive: td.TapeDrive, file: int) -> list[bytes]:
    """The blocks of a tape file as dd reads them (the header included)."""
    drive.op(td.MTREW, 1)
    drive.op(td.MTFSF, file)
    return list(iter(lambda: drive.read(4 * MIB), b""))


def _rewrite_file(drive: td.TapeDrive, file: int, blocks: list[bytes]) -> None:
    """Overwrite the data blocks of a (last) tape file, as a tape tool would."""
    drive.op(td.MTREW, 1)
    drive.op(td.MTFSF, file)
    drive.op(td.MTFSR, 1)
    for b in blocks:
        drive.write(b)
    drive.op(td.MTWEOF, 1)


def _gnu_tar(stream: bytes, images: dict[str, bytes], dest: Path) -> None:
    """GNU tar -xSf - extracts every image byte-identical, with its holes."""
    dest.mkdir()
    r = subprocess.run([TAR, "-xSf", "-", "-C", str(dest), "--warning=no-unknown-keyword"], input=stream,
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for name, img in images.items():
        path = dest / "pool" / "vol-group" / f"{name}.img"
        assert path.read_bytes() == img
        data = len(img.rstrip(b"\0"))  # an upper bound of the data; a dense file would take all 8 MiB
        assert path.stat().st_blocks * 512 < 4 * MIB and path.stat().st_size == len(img), data
    assert (dest / "pool" / "vol-group" / tpf.MANIFEST).exists()
    shutil.rmtree(dest)


# -- headers and labels --------------------------------------------------------------------------
def test_part_header_and_label_round_trip_and_reject_damage():
    h = _header()
    raw = h.encode()
    assert len(raw) == tpf.RECORD and raw.startswith(b"VSTOR BACKUP PART v1\n") and raw.endswith(b"\0")
    assert tpf.PartHeader.decode(raw) == h
    text = raw.rstrip(b"\0").decode()
    assert "mt -f TAPE rewind; mt -f TAPE fsf FILE; dd if=TAPE bs=256k skip=1 | tar -xSf -" in text
    assert "the tape file this header starts" in text and "\njob=7\n" in text and "\njson={" in text
    assert "concatenate" in text and "part order" in text
    enc = _header(key_id=3).encode().decode("ascii")
    assert "encrypted: restore with vstor backup restore" in enc and "tar -xSf" not in enc
    inc = _header(level="incremental").encode().decode("ascii")
    assert "only the extents changed since job 6" in inc and "vstor backup restore" in inc
    for bad in (raw[:-1], b"X" + raw[1:], raw.replace(b'"job":7', b'"job":8'), bytes(tpf.RECORD)):
        with pytest.raises(FormatError):
            tpf.PartHeader.decode(bad)
    label = tpf.TapeLabel("BK0001L9", "c0ffee-uuid", 1700000000.0)
    lraw = label.encode()
    assert len(lraw) == tpf.RECORD and lraw.startswith(b"VSTOR TAPE LABEL v1\n")
    assert tpf.TapeLabel.decode(lraw) == label
    with pytest.raises(FormatError):
        tpf.TapeLabel.decode(lraw.replace(b"BK0001L9", b"BK0002L9", 1))
    with pytest.raises(FormatError):
        tpf.TapeLabel.decode(raw)  # a part header is not a label
    with pytest.raises(UsageError):
        tpf.PartHeader(1, 0, "p", "full", "s", "n", 0.0, None, None, [{"name": "v" * 200, "size": 1}] * 2000).encode()


# -- the stream ------------------------------------------------------------------------------------
@needs_tar
def test_stream_round_trip_any_chunking_and_gnu_tar(tmp_path):
    vols, images = _volumes()
    stream = b"".join(tpf.pax_stream("pool/vol-group", vols, {"job": "7", "snapshot": "snap-1"}))
    assert len(stream) % 512 == 0 and len(stream) < 4 * MIB
    for cuts in ([1], range(0, len(stream), 511), range(0, len(stream), 4097 * 64), []):
        edges = [0, *cuts, len(stream)]
        manifest = _restore((stream[a:b] for a, b in itertools.pairwise(edges)), images)
    assert manifest["meta"] == {"job": "7", "snapshot": "snap-1"} and manifest["source"] == "pool/vol-group"
    v0 = manifest["volumes"][0]
    assert (v0["name"], v0["size"], v0["extents"], v0["bytes"]) == ("disk0", 8 * MIB, 3, 4096 + 2 * MIB + 1024 + 65536)
    _gnu_tar(stream, images, tmp_path / "x")
    with pytest.raises(CorruptData):  # cut short
        tpf.read_stream(iter([stream[: len(stream) // 2]]), lambda *a: None)
    for junk in (b"", bytes(1024) + b"x" * 512, os.urandom(4096)):
        with pytest.raises(FormatError):
            tpf.read_stream(iter([junk]), lambda *a: None)


def test_large_members_get_a_pax_size_and_long_names_a_pax_path():
    from vstor.backup.media import _tarstream

    big = _tarstream.header("p/GNUSparseFile.0/v.img", 9 << 30, {"GNU.sparse.major": "1"})
    assert b" size=9663676416\n" in big and len(big) % 512 == 0
    source = "pool/" + "x" * 150  # a ustar name holds 100 bytes (prefix 155): the pax path key carries it
    vols = [tpf.VolumeSource("v", 4096, [(0, 4096)], lambda o, n: b"\x01" * n)]
    stream = b"".join(tpf.pax_stream(source, vols, {"job": "1"}))
    assert b" path=" in stream
    manifest = tpf.read_stream(iter([stream]), lambda *a: None)
    assert manifest["source"] == source and manifest["volumes"][0]["bytes"] == 4096


def test_sealed_records_bind_job_part_and_index():
    rec = os.urandom(4096)
    sealed = tpf.seal_record(KEY, 7, 1, 5, rec)
    assert len(sealed) == len(rec) + 16 and tpf.open_record(KEY, 7, 1, 5, sealed) == rec
    assert tpf.seal_record(KEY, 7, 1, 6, rec) != sealed  # a fresh nonce per index
    for job, part, index in ((7, 1, 6), (7, 0, 5), (8, 1, 5)):
        with pytest.raises(CorruptData):
            tpf.open_record(KEY, job, part, index, sealed)
    with pytest.raises(CorruptData):
        tpf.open_record(KEY, 7, 1, 5, sealed[:100] + bytes([sealed[100] ^ 1]) + sealed[101:])


# -- on tape ----------------------------------------------------------------------------------------
@needs_tar
def test_job_on_tape_reads_back_and_restores_with_plain_tools(carts, tmp_path):
    drive = carts()
    places, stream, images = _write_job(drive)
    assert len(places) == 1
    p = places[0]
    assert (p.part, p.barcode, p.file, p.first_block, p.bytes) == (0, "BK0001L9", 1, 1, len(stream))
    assert p.last_block == -(-len(stream) // tpf.RECORD)
    assert tpf.TapeLabel.decode(_raw_file(drive, 0)[0]).pool_uuid == "c0ffee-uuid"
    assert _restore(mio.read_part(drive, 1, job=7), images)["meta"]["job"] == "7"
    assert b"".join(mio.read_part(drive, 1, job=7)) == stream
    _gnu_tar(b"".join(mio.read_part(drive, 1, job=7)), images, tmp_path / "read_part")
    assert mio.part_sha256(drive, 1) == p.sha256
    raw = _raw_file(drive, 1)  # dd if=TAPE bs=256k skip=1
    assert all(len(b) == tpf.RECORD for b in raw[:-1]) and len(raw) == p.last_block + 1
    _gnu_tar(b"".join(raw[1:]), images, tmp_path / "dd")
    with pytest.raises(FormatError):
        next(mio.read_part(drive, 1, job=8))
    with pytest.raises(FormatError):
        next(mio.read_part(drive, 0, job=7))  # the label


@needs_tar
@pytest.mark.parametrize("ew", [1 * MIB, 0], ids=["early-warning", "hard-end"])
def test_job_spanning_two_cartridges(carts, tmp_path, ew):
    first, second = carts("BK0001L9", cap=3 * MIB, ew=ew), carts("BK0002L9", cap=64 * MIB)
    changes = []

    def next_drive() -> td.TapeDrive:
        changes.append(1)
        return second

    places, stream, images = _write_job(first, next_drive)
    assert changes == [1] and [(p.part, p.barcode, p.file) for p in places] == [(0, "BK0001L9", 1),
                                                                                (1, "BK0002L9", 1)]
    assert sum(p.bytes for p in places) == len(stream)  # nothing lost, nothing twice
    assert 1 * MIB < places[0].bytes < (2 if ew else 3) * MIB  # switched at the early warning / the hard end
    assert tpf.PartHeader.decode(_raw_file(second, 1)[0]).part == 1
    joined = itertools.chain(mio.read_part(first, 1, job=7, part=0), mio.read_part(second, 1, job=7, part=1))
    assert b"".join(joined) == stream
    _restore(itertools.chain(mio.read_part(first, 1, job=7), mio.read_part(second, 1, job=7, part=1)), images)
    assert [mio.part_sha256(d, 1) for d in (first, second)] == [p.sha256 for p in places]
    _gnu_tar(b"".join(_raw_file(first, 1)[1:] + _raw_file(second, 1)[1:]), images, tmp_path / "span")


def test_encrypted_job_spanning_cartridges_reseals_the_refused_block(carts):
    first, second = carts("BK0001L9", cap=3 * MIB, ew=1 * MIB), carts("BK0002L9", cap=64 * MIB)
    places, stream, images = _write_job(first, lambda: second, key=KEY)
    assert [p.barcode for p in places] == ["BK0001L9", "BK0002L9"]
    parts = itertools.chain(mio.read_part(first, 1, KEY, 7, 0), mio.read_part(second, 1, KEY, 7, 1))
    assert b"".join(parts) == stream
    with pytest.raises(CorruptData):  # part 1's blocks are sealed for part 1: they fail as part 0's
        b"".join(tpf.open_record(KEY, 7, 0, i, b) for i, b in enumerate(_raw_file(second, 1)[1:]))


def test_encrypted_job_round_trip_and_moved_or_flipped_blocks(carts):
    drive = carts()
    places, stream, images = _write_job(drive, key=KEY)
    assert b"".join(mio.read_part(drive, 1, key=KEY, job=7)) == stream
    assert mio.part_sha256(drive, 1) == places[0].sha256
    blocks = _raw_file(drive, 1)[1:]
    assert stream[:512] not in blocks[0]  # the tar headers are not in clear
    with pytest.raises(UsageError):
        next(mio.read_part(drive, 1, job=7))  # no key for an encrypted part
    _rewrite_file(drive, 1, [blocks[0], blocks[2], blocks[1], *blocks[3:]])
    with pytest.raises(CorruptData):
        b"".join(mio.read_part(drive, 1, key=KEY, job=7))
    flipped = bytearray(blocks[1])
    flipped[1000] ^= 0x10
    _rewrite_file(drive, 1, [blocks[0], bytes(flipped), *blocks[2:]])
    with pytest.raises(CorruptData):
        b"".join(mio.read_part(drive, 1, key=KEY, job=7))


def test_flipped_bit_in_a_plain_data_block_is_caught(carts):
    drive = carts()
    places, stream, images = _write_job(drive)
    blocks = _raw_file(drive, 1)[1:]
    flipped = bytearray(blocks[3])  # extent data of disk0
    flipped[12345] ^= 0x01
    _rewrite_file(drive, 1, [*blocks[:3], bytes(flipped), *blocks[4:]])
    assert mio.part_sha256(drive, 1) != places[0].sha256
    with pytest.raises(CorruptData):
        tpf.read_stream(mio.read_part(drive, 1, job=7), lambda *a: None)


def test_scan_cartridge_finds_every_part(carts):
    drive = carts()
    a, _, _ = _write_job(drive, job=7)
    b, _, _ = _write_job(drive, job=8, seed=2)
    empty = mio.TapeWriter(drive, lambda: pytest.fail("no change"), lambda p, code: _header(9, p).encode(), job=9)
    assert [(p.file, p.first_block, p.last_block, p.bytes) for p in empty.close()] == [(3, 1, 0, 0)]
    drive.op(td.MTEOM, 1)
    drive.write(b"not ours")  # a foreign tape file at the end, without a filemark
    found = [(f, h.job, h.part) for f, h in mio.scan_cartridge(drive)]
    assert found == [(1, 7, 0), (2, 8, 0), (3, 9, 0)] and (a[0].file, b[0].file) == (1, 2)
    assert hashlib.sha256(b"".join(_raw_file(drive, 2)[1:])).hexdigest() == b[0].sha256
