"""The cartridge's flush mark: a load indexes what was durable from the object headers alone,
checks every payload after it, and never trusts a mark that could stand past the durable end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vstor.errors import CorruptData
from vstor.media import tapeformat as tf
from vstor.media.cartridge import Cartridge

MIB = 1 << 20


def _cart(tmp_path: Path, worm: bool = False) -> Cartridge:
    code = "VT0001LW" if worm else "VT0001L9"
    return Cartridge(str(tmp_path / f"{code}.tape"), code, 64 * MIB, worm, compress=False)


def _write(c: Cartridge, blocks: int, fill: int = 0, filemark: bool = True) -> None:
    for i in range(blocks):
        c.append(bytes([fill + i]) * 1000)
    if filemark:
        c.append(None)
        c.flush()


def _flip_payload(c: Cartridge, n: int) -> None:
    with open(c.path, "r+b") as f:
        f.seek(c.offsets[n] + tf.OBJ_HEADER_SIZE + 10)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


def _mark(path: str) -> tuple[int, int] | None:
    with open(path, "rb") as f:
        return tf.unpack_mark(f.read(tf.FILE_HEADER_SIZE))


def test_a_load_takes_the_flushed_objects_from_their_headers_and_checks_the_rest(tmp_path):
    c = _cart(tmp_path)
    _write(c, 5)  # objects 0-4 data, 5 filemark: flushed, the mark at the end
    flushed = c.end
    assert _mark(c.path) == (flushed, 6)
    _write(c, 2, fill=50, filemark=False)  # 6, 7: written, never flushed
    _flip_payload(c, 1)  # damage before the mark: a load cannot see it, a read must
    _flip_payload(c, 7)  # damage after it: a torn tail, cut at load
    c.file.close()  # no flush mark: as after a crash
    again = _cart(tmp_path)
    assert again.indexed == 6 and again.eod == 7 and again.filemarks == [5]
    assert "object 7 fails its checksum" in again.cut and os.path.getsize(c.path) == again.end
    assert again.read(0) == bytes(1000) and again.read(6) == bytes([50]) * 1000
    with pytest.raises(CorruptData, match="block 1 is damaged"):
        again.read(1)
    assert again.verify()["damaged"] == ["object 1: object 1 fails its checksum"]


def test_a_write_before_the_mark_moves_the_mark_back_before_new_data_lands(tmp_path):
    c = _cart(tmp_path)
    _write(c, 4)
    c.truncate(2)  # as a write at block 2 does (tapedrive.py): the mark must follow, durably
    assert _mark(c.path) == (c.end, 2)
    cut_at = c.end
    _write(c, 3, fill=70, filemark=False)  # not flushed
    c.file.close()
    os.truncate(c.path, os.path.getsize(c.path) - 500)  # a torn last block where the old mark stood
    again = _cart(tmp_path)
    assert again.indexed == 2 and again.eod == 4 and again.cut
    assert [again.read(n) for n in range(4)] == [bytes(1000), bytes([1]) * 1000, bytes([70]) * 1000,
                                                  bytes([71]) * 1000]
    assert cut_at < again.end


@pytest.mark.parametrize("damage", ["header", "mark", "count", "short", "none"])
def test_a_mark_that_does_not_hold_means_checking_every_object(tmp_path, damage):
    c = _cart(tmp_path)
    _write(c, 3)
    _write(c, 2, fill=9)
    c.close()
    end, objects = _mark(c.path) or (0, 0)
    head = Path(c.path).read_bytes()[: tf.FILE_HEADER_SIZE]
    with open(c.path, "r+b") as f:
        if damage == "header":  # a damaged header before the mark: checked from there, cut as ever
            f.seek(c.offsets[4])
            f.write(b"XXXX")
        elif damage == "mark":  # a mark failing its own checksum reads as none
            f.seek(tf.MARK_AT)
            f.write(b"\xff")
        elif damage == "count":  # the headers reach the mark with another count
            f.seek(tf.MARK_AT)
            f.write(tf.pack_mark(head, end, objects + 1))
        elif damage == "short":  # durable bytes lost (the file is shorter than the mark)
            f.truncate(end - 10)
        else:  # a cartridge written before the mark existed: zeros there
            f.seek(tf.MARK_AT)
            f.write(bytes(tf.MARK.size))
    again = _cart(tmp_path)
    if damage == "header":
        assert again.indexed == 4 and again.eod == 4 and "not an object header" in again.cut
        assert _mark(c.path) == (again.end, 4)  # the mark follows the cut
    elif damage == "short":
        assert again.indexed == 0 and again.eod == 6 and again.cut
    else:
        assert again.indexed == 0 and again.eod == 7 and again.cut == ""
    assert again.read(0) == bytes(1000)


def test_a_worm_cartridge_is_checked_whole_at_every_load(tmp_path):
    c = _cart(tmp_path, worm=True)
    _write(c, 3)
    c.close()
    assert _mark(c.path) == (c.end, 4)
    _flip_payload(c, 1)
    again = _cart(tmp_path, worm=True)
    assert again.indexed == 0 and again.eod == 1 and "object 1" in again.cut
