"""Tape emulation without a daemon: cartridge format, st drive semantics, library, media types."""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path

import pytest
import xxhash

from vstor.errors import AlreadyExists, Busy, KeyError_, MediaError, NotFound, UsageError
from vstor.media import mediatypes as mt
from vstor.media import tapedrive as td
from vstor.media import tapeformat as tf
from vstor.media.cartridge import Cartridge
from vstor.media.library import Library, Medium
from vstor.media.manager import parse_range

MIB = 1 << 20


def _cart(tmp_path: Path, code: str = "VT0001L9", cap: int = 64 * MIB, **kw: object) -> Cartridge:
    return Cartridge(str(tmp_path / f"{code}.tape"), code, cap, **kw)


def _drive(c: Cartridge, protect: bool = False, writable: bool = True, max_block: int = MIB,
           ew: int | None = 0) -> td.TapeDrive:  # ew 0: no early warning unless a test asks for one
    return td.TapeDrive(c, 0x60, writable, protect, max_block, ew_bytes=ew)


def _pair(tmp_path: Path, code: str = "VT0001L9", cap: int = 64 * MIB, ew: int = 0, max_block: int = MIB,
          **kw: object) -> tuple[Cartridge, td.TapeDrive]:
    c = _cart(tmp_path, code, cap, **kw)
    return c, _drive(c, max_block=max_block, ew=ew)


def _errno(fn: object, *args: object) -> int:
    """The errno of the MediaError ``fn(*args)`` raises; 0 if it succeeds."""
    try:
        fn(*args)  # type: ignore[operator]
    except MediaError as e:
        return e.errno
    return 0


def _layout(t: td.TapeDrive) -> None:
    """Objects: 0 1 2 data, 3 FM, 4 5 data, 6 FM, 7 data; EOD 8."""
    for blocks in (3, 2):
        for i in range(blocks):
            t.write(bytes([65 + i]) * (100 + i))
        t.op(td.MTWEOF, 1)
    t.write(b"last")


# -- cartridge format and st drive semantics ---------------------------------------------------------
def test_variable_blocks_filemark_and_eod(tmp_path):
    c, t = _pair(tmp_path)
    assert t.write(b"a" * 100) == 100 and t.write(b"b" * 300) == 300
    t.op(td.MTWEOF, 1)
    t.write(b"c" * 7)
    assert (c.eod, c.filemarks) == (4, [2])
    t.op(td.MTREW, 1)  # rewind after a write first writes a filemark (st)
    assert (c.eod, c.filemarks, t.pos) == (5, [2, 4], 0)
    st = t.status()
    assert (st.fileno, st.blkno, st.density) == (0, 0, 0x60) and st.gstat & td.GMT_BOT and not st.gstat & td.GMT_EOD
    assert _errno(t.read, 99) == errno.ENOMEM and t.pos == 0  # short buffer: nothing consumed
    assert [t.read(1 << 16), t.read(1 << 16)] == [b"a" * 100, b"b" * 300]  # one block per read, not 400 bytes
    assert t.read(1 << 16) == b"" and t.pos == 3  # the filemark: 0 bytes, moved past it
    st = t.status()
    assert (st.fileno, st.blkno) == (1, 0) and st.gstat & td.GMT_EOF and not st.gstat & td.GMT_BOT
    assert t.read(1 << 16) == b"c" * 7
    assert t.read(10) == b"" and t.pos == 5  # the closing filemark
    assert t.read(10) == b"" and t.read(10) == b"" and t.pos == 5  # EOD: no move
    assert t.status().gstat & td.GMT_EOD and (t.status().fileno, t.status().blkno) == (2, 0)


def test_write_in_the_middle_truncates_the_rest(tmp_path):
    c, t = _pair(tmp_path)
    _layout(t)
    t.op(td.MTSEEK, 2)  # the seek after a write adds a filemark first: EOD 9
    assert c.eod == 9 and c.filemarks == [3, 6, 8]
    size_before = os.path.getsize(c.path)
    t.write(b"new")
    assert (c.eod, c.filemarks, t.pos) == (3, [], 3) and os.path.getsize(c.path) < size_before
    t.close(rewind=True)
    assert [t.read(MIB) for _ in range(5)] == [b"A" * 100, b"B" * 101, b"new", b"", b""]
    c.close()
    again = _cart(tmp_path)
    assert again.eod == 4 and again.filemarks == [3] and again.cut == ""


def test_weof_and_close_flush_and_close_adds_one_filemark(tmp_path, monkeypatch):
    c, t = _pair(tmp_path)
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    t.write(b"x" * 10)
    assert synced == []
    t.op(td.MTWEOF, 1)
    assert synced == [c.fd] and c.filemarks == [1]
    t.op(td.MTWEOF, 0)  # WEOF 0: a flush barrier, no filemark
    assert synced == [c.fd] * 2 and c.eod == 2
    t.close(rewind=False)  # a flush; nothing written since the filemark: no new one
    assert c.eod == 2 and t.pos == 2 and len(synced) == 3
    t.write(b"y")
    t.close(rewind=False)
    assert (c.filemarks, t.pos, len(synced)) == ([1, 3], 4, 5)  # the filemark's flush, then close's
    t.close(rewind=True)
    assert (c.filemarks, t.pos, c.eod) == ([1, 3], 0, 4)


def test_spacing_and_positions(tmp_path):
    c, t = _pair(tmp_path)
    _layout(t)
    t.op(td.MTWEOF, 0)
    assert (c.eod, c.filemarks) == (8, [3, 6])
    eio = errno.EIO
    steps = [  # op, count, errno, (position, fileno, blkno) after it
        (td.MTREW, 1, 0, (0, 0, 0)), (td.MTFSF, 2, 0, (7, 2, 0)), (td.MTBSF, 1, 0, (6, 1, 2)),  # BSF: BOT side
        (td.MTFSF, 1, 0, (7, 2, 0)), (td.MTREW, 1, 0, (0, 0, 0)), (td.MTFSR, 2, 0, (2, 0, 2)),
        (td.MTFSR, 2, eio, (4, 1, 0)),  # FSR stops past the filemark at 3, BSR on its BOT side
        (td.MTBSR, 1, eio, (3, 0, 3)), (td.MTBSR, 2, 0, (1, 0, 1)), (td.MTEOM, 1, 0, (8, 2, 1)),
        (td.MTSEEK, 5, 0, (5, 1, 1)), (td.MTSEEK, 9, eio, (5, 1, 1)), (td.MTNOP, 1, 0, (5, 1, 1)),
        (td.MTFSF, 3, eio, (8, 2, 1)), (td.MTBSF, 3, eio, (0, 0, 0)), (td.MTBSR, 1, eio, (0, 0, 0)),
        (99, 1, errno.EINVAL, (0, 0, 0)),
    ]
    for op, count, err, want in steps:
        assert _errno(t.op, op, count) == err, (op, count)
        assert (t.pos, t.status().fileno, t.status().blkno) == want, (op, count)
    t.op(td.MTFSF, 2)
    assert t.status().gstat & td.GMT_EOF and not t.status().gstat & (td.GMT_BOT | td.GMT_EOD)
    t.op(td.MTBSF, 1)
    assert not t.status().gstat & td.GMT_EOF
    t.op(td.MTEOM, 0)
    assert t.status().gstat & td.GMT_EOD and not t.status().gstat & td.GMT_EOF


def test_fixed_block_mode(tmp_path):
    c, t = _pair(tmp_path, max_block=4096)
    t.op(td.MTSETBLK, 512)
    assert t.status().blksize == 512
    assert t.write(bytes(range(256)) * 6) == 1536 and c.eod == 3
    assert _errno(t.write, b"x" * 100) == errno.EINVAL and c.eod == 3
    assert _errno(t.op, td.MTSETBLK, 8192) == errno.EINVAL and t.blksize == 512
    t.op(td.MTREW, 1)
    assert t.read(1024) == bytes(range(256)) * 4 and t.pos == 2
    assert t.read(4096) == bytes(range(256)) * 2 and t.pos == 3  # stops before the filemark
    assert t.read(4096) == b"" and t.pos == 4
    t.op(td.MTSETBLK, 0)
    assert _errno(t.write, b"y" * 4097) == errno.EINVAL and c.eod == 4  # larger than max_block
    assert t.write(b"y" * 4096) == 4096 and c.eod == 5


def test_fixed_mode_write_at_hard_end_writes_nothing(tmp_path):
    c, t = _pair(tmp_path, cap=3 * 1064 + 500, compress=False)
    t.op(td.MTSETBLK, 1000)
    t.write(b"a" * 2000)
    assert _errno(t.write, b"b" * 2000) == errno.ENOSPC
    assert c.eod == 2  # the failed write must leave the tape as it was


def test_early_warning_then_hard_end(tmp_path):
    c, t = _pair(tmp_path, cap=10_000, compress=False, ew=3000)  # 1000-byte blocks take 1064 bytes; EW from 7000
    for _ in range(7):
        assert t.write(b"x" * 1000) == 1000  # the 7th enters the zone and still succeeds
    assert c.eod == 7 and t.status().gstat & td.GMT_EOT
    assert _errno(t.write, b"x" * 1000) == errno.ENOSPC and c.eod == 7  # once
    assert t.write(b"x" * 1000) == 1000 and t.write(b"x" * 1000) == 1000 and c.eod == 9
    size = os.path.getsize(c.path)
    for _ in range(3):
        assert _errno(t.write, b"x" * 1000) == errno.ENOSPC
    assert c.eod == 9 and os.path.getsize(c.path) == size


def test_early_warning_cleared_by_rewind(tmp_path):
    c, t = _pair(tmp_path, cap=10_000, compress=False, ew=3000)
    for _ in range(7):
        t.write(b"x" * 1000)
    t.op(td.MTREW, 1)
    assert t.write(b"new backup") == 10 and c.eod == 1


def test_eot_shown_until_the_tape_is_repositioned(tmp_path):
    """st: EOT (the early-warning EOM state) holds from the write that enters the zone until the
    next repositioning; data lying in the zone alone shows no EOT (a load or a rewind)."""
    c, t = _pair(tmp_path, cap=10_000, compress=False, ew=3000)  # EW from the 7th 1000-byte block

    def eot() -> bool:
        return bool(t.status().gstat & td.GMT_EOT)

    for _ in range(6):
        t.write(b"x" * 1000)
    assert not eot()
    t.write(b"x" * 1000)
    assert eot() and _errno(t.write, b"x") == errno.ENOSPC and eot()  # still EOT after the ENOSPC
    t.close(rewind=False)  # the no-rewind device: the closing filemark keeps the state
    assert eot() and c.eod == 8
    t.op(td.MTREW, 1)
    st = t.status()
    assert not st.gstat & td.GMT_EOT and st.gstat & td.GMT_BOT and (st.fileno, st.blkno) == (0, 0)
    t.op(td.MTEOM, 1)  # back at EOD, inside the zone, by positioning: EOD, not EOT (st)
    assert t.status().gstat & td.GMT_EOD and not eot()
    t.write(b"y" * 10)
    assert eot()  # a write in the zone gives the warning again
    t.op(td.MTNOP, 1)
    assert eot()  # an operation that does not move the tape keeps it
    for op, count in ((td.MTBSR, 1), (td.MTFSR, 1), (td.MTBSF, 1), (td.MTFSF, 0), (td.MTSEEK, 2),
                      (td.MTSETPART, 0), (td.MTLOAD, 0), (td.MTOFFL, 0)):
        t.op(td.MTEOM, 1)
        t.write(b"w")
        assert eot(), op
        _errno(t.op, op, count)  # BSR stops at the filemark written first, FSR at EOD: EIO
        assert not eot(), op  # cleared as the operation starts, whether it then succeeds or not
    t.op(td.MTEOM, 1)
    t.write(b"z")
    t.close(rewind=True)  # the rewinding device's close rewinds: cleared
    assert not eot() and t.pos == 0
    assert not _drive(c, ew=3000).status().gstat & td.GMT_EOT  # a fresh load of the nearly full tape


def test_lz4_counts_stored_bytes(tmp_path):
    def fill(code: str, block: bytes, compress: bool) -> int:
        t = _drive(_cart(tmp_path, code, cap=256 * 1024, compress=compress))
        n = 0
        while (err := _errno(t.write, block)) == 0:
            n += 1
        assert err == errno.ENOSPC
        return n

    zeros = bytes(8192)
    packed, plain, noise = fill("VT0001L9", zeros, True), fill("VT0002L9", zeros, False), os.urandom(8192)
    assert plain == fill("VT0003L9", noise, True) == 31 and packed > 10 * plain  # 31 * 8256 <= 256 KiB
    c = _cart(tmp_path, "VT0001L9", cap=256 * 1024)
    assert c.read(0) == zeros and c.used < 256 * 1024 and c.eod == packed


def test_encryption_needs_the_key(tmp_path):
    key, plain = os.urandom(32), b"TOPSECRET-" * 100
    c, t = _pair(tmp_path, key=key)
    t.write(plain)
    t.close(rewind=True)
    c.close()
    raw = Path(c.path).read_bytes()
    assert b"TOPSECRET" not in raw and len(raw) > tf.FILE_HEADER_SIZE + tf.OBJ_HEADER_SIZE
    with pytest.raises(KeyError_, match="encrypted"):
        _cart(tmp_path).read(0)
    with pytest.raises(KeyError_, match="does not decrypt"):
        _cart(tmp_path, key=os.urandom(32)).read(0)
    c2 = _cart(tmp_path, key=key)
    assert c2.read(0) == plain and c2.read(1) is None and c2.cut == ""


def test_worm_appends_only(tmp_path):
    c, t = _pair(tmp_path, "VT0001LW", worm=True)
    for i in range(3):
        t.write(bytes([i]) * 50)
    t.op(td.MTWEOF, 1)
    t.op(td.MTSEEK, 1)
    assert _errno(t.write, b"overwrite") == errno.EACCES
    assert _errno(t.op, td.MTWEOF, 1) == errno.EACCES
    assert c.eod == 4 and c.read(1) == bytes([1]) * 50
    t.op(td.MTEOM, 1)
    assert t.write(b"appended") == 8 and c.eod == 5
    v = c.verify()
    assert v["damaged"] == [] and len(v["chain"]) == 64 and v["chain"] == c.chain.hex()
    c.close()
    assert _cart(tmp_path, "VT0001LW", worm=True).cut == ""


@pytest.mark.parametrize("fix_csum", [False, True])
def test_tampered_block_is_reported_and_cut(tmp_path, fix_csum):
    c, t = _pair(tmp_path, "VT0001LW", worm=True, compress=False)
    for i in range(5):
        t.write(bytes([i]) * 200)
    pos = c.offsets[1]
    with open(c.path, "r+b") as f:  # flip a byte of block 1; fix_csum: re-seal its xxh3, so only the chain breaks
        f.seek(pos)
        head, payload = bytearray(f.read(64)), bytearray(f.read(200))
        payload[10] ^= 0xFF
        if fix_csum:
            struct.pack_into("<Q", head, 24, xxhash.xxh3_64_intdigest(bytes(head[:24] + payload)))
        f.seek(pos)
        f.write(head + payload)
    why = "hash chain broken" if fix_csum else "object 1 fails its checksum"
    assert c.verify()["damaged"] == [f"object 1: {why}"]
    c.close()
    again = _cart(tmp_path, "VT0001LW", worm=True)
    assert ("hash chain" if fix_csum else "checksum") in again.cut and "at byte" in again.cut
    assert again.eod == 1 and os.path.getsize(again.path) == pos and again.read(0) == bytes(200)
    assert again.verify()["damaged"] == []


@pytest.mark.parametrize("damage", ["garbage", "mid-payload", "mid-header"])
def test_torn_tail_keeps_whole_objects(tmp_path, damage):
    c, t = _pair(tmp_path, compress=False)
    for i in range(3):
        t.write(bytes([i]) * 500)
    t.op(td.MTWEOF, 1)
    whole = os.path.getsize(c.path)
    t.write(b"z" * 500)
    c.close()
    os.truncate(c.path, whole + {"garbage": 0, "mid-payload": 64 + 250, "mid-header": 30}[damage])
    if damage == "garbage":
        with open(c.path, "ab") as f:
            f.write(b"VTOB" + os.urandom(100))
    again = _cart(tmp_path)
    assert again.cut and again.eod == 4 and again.filemarks == [3] and os.path.getsize(c.path) == whole
    assert [again.read(n) for n in range(4)] == [bytes(500), bytes([1]) * 500, bytes([2]) * 500, None]


def test_write_protect_and_read_only_generation(tmp_path):
    c = _cart(tmp_path)
    _drive(c).write(b"data")
    for t in (_drive(c, protect=True), _drive(c, writable=False)):
        assert _errno(t.write, b"x") == errno.EACCES
        assert _errno(t.op, td.MTWEOF, 1) == errno.EACCES
        assert t.status().gstat & td.GMT_WR_PROT and t.read(100) == b"data"
    assert c.eod == 1 and not _drive(c).status().gstat & td.GMT_WR_PROT


# -- library -----------------------------------------------------------------------------------------
def _lib() -> Library:
    lib = Library.create("L", "tape", 8, 2, 2, "LTO-9")
    for code in ("VT0001L9", "VT0002L9"):
        lib.add(Medium(code, "LTO9", 0, 64 * MIB))
    return lib


def test_library_elements_and_addresses():
    lib = _lib()
    assert lib.element("slot1") == lib.element(1024) == lib.element("1024") == ("slot", 0)
    assert lib.element("drive0") == lib.element(256) == ("drive", 0) and lib.element("DRIVE1") == ("drive", 1)
    assert lib.element("mail1") == lib.element(16) == ("mail", 0) and lib.element(17) == ("mail", 1)
    assert lib.address("slot", 7) == 1031 and lib.media["VT0002L9"].home == 1025
    for bad in ("slot0", "slot9", "drive2", "mail3", 1032, 258, 18, 5):
        with pytest.raises(NotFound):
            lib.element(bad)
    with pytest.raises(UsageError):
        lib.element("shelf1")
    inv = lib.inventory()
    assert [r["element"] for r in inv][:3] == ["drive0", "drive1", "slot1"] and len(inv) == 12
    assert inv[2] == {"element": "slot1", "address": 1024, "barcode": "VT0001L9", "kind": "LTO9", "protect": False}


def test_library_move_errors_say_why():
    lib = _lib()
    with pytest.raises(Busy, match=r"source slot3 \(address 1026\) is empty"):
        lib.move("slot3", "drive0")
    assert lib.move("slot1", "drive0") == "VT0001L9" and lib.media["VT0001L9"].loads == 1
    lib.mail_open = True
    for src, dst, busy, why in [("slot2", "drive0", set(), r"drive0 \(address 256\): the drive is loaded \(VT0001L9\)"),
                                ("drive0", "slot2", set(), r"slot2 \(address 1025\): the destination is full"),
                                ("drive0", "slot3", {0}, "drive0 is in use"),
                                ("slot2", "mail1", set(), "mail slots of L are open")]:
        with pytest.raises(Busy, match=why):
            lib.move(src, dst, busy)
    assert lib.slots[1] == "VT0002L9" and lib.drives == ["VT0001L9", None]
    lib.mail_open = False
    lib.move("slot2", "mail1")
    assert lib.where("VT0002L9") == ("mail", 0) and lib.home_of("VT0002L9") == "1025"


def test_library_add_remove_and_round_trip():
    lib = _lib()
    with pytest.raises(AlreadyExists, match="VT0001L9 already exists"):
        lib.add(Medium("VT0001L9", "LTO9", 0, 1))
    for fn in (lib.medium, lib.where, lib.remove):
        with pytest.raises(NotFound, match="VT0099L9"):
            fn("VT0099L9")
    lib.move("slot1", "drive1")
    lib.mail_open = True
    back = Library.from_dict(json.loads(json.dumps(lib.as_dict())))
    assert back == lib and isinstance(back.media["VT0001L9"], Medium) and back.drives == [None, "VT0001L9"]
    lib.remove("VT0001L9")
    assert "VT0001L9" not in lib.media and lib.drives == [None, None]
    full = Library.create("F", "tape", 1, 1, 0, "LTO-9")
    full.add(Medium("VT0001L9", "LTO9", 0, 1))
    with pytest.raises(Busy, match="no empty slot"):
        full.add(Medium("VT0002L9", "LTO9", 0, 1))
    with pytest.raises(UsageError):
        Library.create("X", "disk", 1, 1, 0, "")


def test_new_media_never_take_the_home_slot_of_a_loaded_cartridge(tmp_path):
    """A cartridge in a drive still owns its home slot: create and import place new media
    elsewhere, and its unload finds the slot free."""
    lib = Library.create("L", "tape", 3, 2, 0, "LTO-9")
    lib.add(Medium("VT0001L9", "LTO9", 0, 1))
    lib.add(Medium("VT0002L9", "LTO9", 0, 1))
    lib.move("slot1", "drive0")
    assert lib.free_slots() == [2] and lib.free_slots(keep="VT0001L9") == [0, 2]
    lib.add(Medium("VT0003L9", "LTO9", 0, 1))
    assert lib.slots == [None, "VT0002L9", "VT0003L9"] and lib.media["VT0003L9"].home == 1026
    with pytest.raises(Busy, match="no empty slot for VT0004L9.*home slots of loaded media"):
        lib.add(Medium("VT0004L9", "LTO9", 0, 1))
    assert lib.home_of("VT0001L9") == "1024"
    lib.move("slot2", "drive1")  # VT0002L9's home is slot2; VT0001L9's slot1 is taken by hand
    lib.move("slot3", "slot1")
    assert lib.home_of("VT0001L9") == "1026"  # not slot2: VT0002L9 owns it

    from vstor.media.manager import MediaManager

    mgr = MediaManager(str(tmp_path))
    mgr.create_library("M", "tape", 3, 1, 0)
    mgr.create_media("M", ["VT0001L9", "VT0002L9"], capacity=1 << 20)
    mgr.load("M", "VT0001L9", 0)
    with pytest.raises(Busy, match="1 empty slots .not counting the home slots of loaded media., not 2"):
        mgr.create_media("M", ["VT0003L9", "VT0004L9"])
    assert "VT0003L9" not in mgr.lib("M").media
    mgr.create_media("M", ["VT0003L9"], capacity=1 << 20)
    assert mgr.lib("M").slots == [None, "VT0002L9", "VT0003L9"]
    assert mgr.unload("M", 0)["to"] == 1024
    mgr.close()


# -- media types and ranges --------------------------------------------------------------------------
def test_tape_kind_and_lto_compatibility():
    for gen in range(5, 10):
        k = mt.tape_kind(f"VT0001L{gen}")
        assert (k.gen, k.worm, k.cleaning, k.name) == (gen, False, False, f"LTO{gen}")
    worm = {s: mt.tape_kind(f"VT0001{s}") for s in ("LT", "LU", "LV", "LX", "LW")}
    assert {s: k.gen for s, k in worm.items() if k.worm} == {"LT": 5, "LU": 6, "LV": 7, "LX": 8, "LW": 9}
    assert worm["LW"].name == "LTO9 WORM" and mt.tape_kind("CLN001L9").name == "CLN"
    assert mt.tape_kind("CLN001L9").cleaning and not mt.tape_kind("CLN001L9").worm
    assert (mt.LTO[9].density, mt.LTO[5].density) == (0x60, 0x58)
    for bad in ("", "vt0001l9", "VT0001L4", "VT0001X9", "VT-001L9", "A" * 15 + "L9", "VT0001"):
        with pytest.raises(UsageError):
            mt.tape_kind(bad)
    assert [mt.can_use(9, g) for g in (6, 7, 8, 9)] == [(False, False), (False, False), (True, True), (True, True)]
    assert [mt.can_use(7, g) for g in (4, 5, 6, 7, 8)] == [(False, False), (True, False), (True, True),
                                                           (True, True), (False, False)]
    assert mt.drive_gen("LTO-9") == mt.drive_gen("lto9") == 9
    with pytest.raises(UsageError):
        mt.drive_gen("LTO-4")


def test_tape_kind_one_character_barcode():
    with pytest.raises(UsageError):
        mt.tape_kind("L")


def test_parse_range():
    assert parse_range("VT0001L9-VT0004L9") == ["VT0001L9", "VT0002L9", "VT0003L9", "VT0004L9"]
    assert parse_range("CLN009L9-CLN010L9") == ["CLN009L9", "CLN010L9"]
    assert parse_range("VT0005LW-VT0005LW") == ["VT0005LW"]
    assert len(parse_range("A0000-A9999")) == 10000
    for bad in ("VT0004L9-VT0001L9", "VT0001L9-VX0002L9", "VT0001L9-VT0002L8", "VT001L9-VT0002L9",
                "A00000-A10000", "vt0001l9-vt0002l9", "VT0001L9"):
        with pytest.raises(UsageError):
            parse_range(bad)


def test_timing_model_waits_with_the_injected_sleep_and_cleaning_uses_run_out(tmp_path) -> None:
    from vstor.errors import Busy, UsageError
    from vstor.media.library import CLEANING_USES, parse_timing
    from vstor.media.manager import MediaManager
    from vstor.media.tapedrive import MTEOM, MTREW

    waits: list[float] = []
    mgr = MediaManager(str(tmp_path), sleep=waits.append)
    mgr.create_library("off", "tape", 4, 1, 0)
    mgr.create_media("off", ["VT0001L9"], capacity=1 << 20)
    mgr.load("off", "VT0001L9", 0)
    assert waits == []  # off by default: no delay at all
    mgr.create_library("slow", "tape", 4, 1, 0, timing="load=2,unload=3,rewind=4,locate=8,move=1")
    mgr.create_media("slow", ["VT0002L9", "CLN001L9"], capacity=64 << 20)
    mgr.load("slow", "VT0002L9", 0)
    assert waits == [1.0, 2.0]  # the picker's move, then load to ready
    drv = mgr.drive("slow", 0)
    for _ in range(4):
        drv.write(b"x" * 1000)
    drv.op(MTREW, 1)  # 5 objects (4 blocks and the filemark written on repositioning): a full rewind
    assert waits[-1] == pytest.approx(4.0)
    drv.op(MTEOM, 1)
    assert waits[-1] == pytest.approx(8.0)  # a locate across the whole tape
    mgr.unload("slow", 0)
    assert waits[-2:] == [3.0, 1.0]
    assert parse_timing("lto9")["load"] == 16.0
    with pytest.raises(UsageError):
        parse_timing("load=fast")
    lib = mgr.lib("slow")
    lib.media["CLN001L9"].loads = CLEANING_USES
    with pytest.raises(Busy, match="used up"):
        mgr.load("slow", "CLN001L9", 0)
    mgr.close()
