"""Tape libraries through the FUSE mount: mt-st and GNU tar on the drive files, write-protect, WORM,
cleaning cartridges, kill -9 mid-archive, inventory persistence, and one-line errors of the media commands."""

from __future__ import annotations

import errno
import fcntl
import filecmp
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest
from harness import one_error_line, run

pytestmark = pytest.mark.root

RECORD = 512 * 512  # tar -b 512: one 256 KiB record per write, one tape block
MTIOCGET, GMT_EOT = 0x80306D02, 0x20000000


def _setup(array) -> None:
    array.vstor("library", "create", "L", "--type", "tape", "--slots", "8", "--drives", "2", "--mailslots", "2")
    array.vstor("media", "create", "L", "--range", "VT0001L9-VT0004L9", "--capacity", "64M")
    array.vstor("media", "load", "L", "VT0001L9", "--drive", "0")


def _dev(array, n: int = 0, rewind: bool = False) -> str:
    return os.path.join(array.mnt, "media", "L", f"{'' if rewind else 'n'}drive{n}")


def _mt(dev: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["mt", "-f", dev, *args], check=check)


def _tree(tmp_path: Path, name: str, size: int) -> Path:
    d = tmp_path / "src" / name
    d.mkdir(parents=True)
    (d / "data.bin").write_bytes(os.urandom(size))
    (d / "note.txt").write_text(f"archive {name}\n")
    return d


def _tar_c(dev: str, src: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run(["tar", "-b", "512", "-cf", dev, "-C", str(src.parent), src.name], check=check)


def _extract_same(dev: str, src: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    run(["tar", "-b", "512", "-xf", dev, "-C", str(dest)])
    assert sorted(p.name for p in (dest / src.name).iterdir()) == ["data.bin", "note.txt"]
    for f in ("data.bin", "note.txt"):
        assert filecmp.cmp(src / f, dest / src.name / f, shallow=False), f


def _blocks(src: Path, tmp_path: Path) -> int:
    """Tape blocks of the archive of ``src``: its size in a file is a whole number of records."""
    out = tmp_path / f"{src.name}.tar"
    run(["tar", "-b", "512", "-cf", str(out), "-C", str(src.parent), src.name])
    return out.stat().st_size // RECORD


def _show(array, code: str) -> dict:
    return array.vstor_json("media", "show", "L", code)


def _inv(array) -> dict[str, str | None]:
    return {r["element"]: r["barcode"] for r in array.vstor_json("media", "inventory", "L")}


@pytest.mark.usefixtures("pool_backend")  # also on a RADOS pool (tests/poolsite.py)
def test_tar_archives_filemarks_and_mt(array, tmp_path):
    _setup(array)
    dev = _dev(array)
    st = _mt(dev, "status").stdout
    assert "File number=0, block number=0" in st and "Density code 0x60" in st and "BOT" in st
    trees = [_tree(tmp_path, f"t{i}", size) for i, size in enumerate((300_000, 500_000, 700_000))]
    for t in trees:
        _tar_c(dev, t)  # each close writes a filemark
    st = _mt(dev, "status").stdout
    assert "File number=3, block number=0" in st and "EOF" in st and "EOD" in st and "BOT" not in st
    blocks = [_blocks(t, tmp_path) for t in trees]
    shown = _show(array, "VT0001L9")
    assert blocks[0] >= 2 and (shown["files"], shown["eod"]) == (3, sum(blocks) + 3)
    _mt(dev, "rewind")
    _mt(dev, "fsf", "2")
    assert _mt(dev, "tell").stdout.strip() == f"At block {blocks[0] + blocks[1] + 2}."
    assert "File number=2, block number=0" in _mt(dev, "status").stdout
    _extract_same(dev, trees[2], tmp_path / "out")
    _mt(dev, "bsf", "2")  # onto the BOT side of the first filemark
    assert _mt(dev, "tell").stdout.strip() == f"At block {blocks[0]}."
    assert f"File number=0, block number={blocks[0]}" in _mt(dev, "status").stdout
    st = _mt(_dev(array, rewind=True), "status").stdout  # the rewinding device: position kept while open
    assert f"block number={blocks[0]}" in st
    st = _mt(dev, "status").stdout  # ... and at BOT after its close
    assert "File number=0, block number=0" in st and "BOT" in st
    listing = run(["tar", "-b", "512", "-tf", _dev(array, rewind=True)]).stdout.split()
    assert sorted(listing) == ["t0/", "t0/data.bin", "t0/note.txt"]  # the first archive, read from BOT
    assert "File number=0, block number=0" in _mt(dev, "status").stdout


def test_eot_in_mt_status_until_rewind(array, tmp_path):
    """Writing into the early-warning zone shows EOT (st's EOM state: the next write is ENOSPC);
    a rewind clears it, and spacing back to EOD by positioning shows EOD, not EOT."""
    _setup(array)
    array.vstor("media", "create", "L", "VT0009L9", "--capacity", "4M")  # early warning from 3 MiB
    array.vstor("media", "load", "L", "VT0009L9", "--drive", "1")
    dev = _dev(array, 1)
    fd = os.open(dev, os.O_WRONLY)
    try:
        written = 0
        while True:  # 256 KiB blocks until the early warning's one ENOSPC
            try:
                written += os.write(fd, os.urandom(RECORD))
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
        gstat = struct.unpack("<qqqqqii", fcntl.ioctl(fd, MTIOCGET, bytes(48)))[3]
        assert gstat & GMT_EOT and 3 << 20 <= written < 4 << 20
    finally:
        os.close(fd)  # the closing filemark
    assert "EOT" in _mt(dev, "status").stdout  # still there for the next program (see admin guide)
    _mt(dev, "rewind")
    st = _mt(dev, "status").stdout
    assert "EOT" not in st and "BOT" in st and "File number=0, block number=0" in st
    _mt(dev, "eod")
    st = _mt(dev, "status").stdout
    assert "EOT" not in st and "EOD" in st


def test_drive_files_do_not_seek_so_tar_reads_past_large_members(array, tmp_path):
    """lseek on a drive file fails with ESPIPE (FUSE has no no-op llseek like st's: a seekable
    regular file makes GNU tar skip members by lseek, which would not move the tape)."""
    _setup(array)
    dev = _dev(array)
    fd = os.open(dev, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as ei:
            os.lseek(fd, 0, os.SEEK_CUR)
        assert ei.value.errno == errno.ESPIPE
    finally:
        os.close(fd)
    t = _tree(tmp_path, "big", 3 * RECORD + 1000)  # data.bin spans records tar would skip by lseek
    (t / "z_after.txt").write_text("after\n")
    _tar_c(dev, t)
    _mt(dev, "rewind")
    listing = run(["tar", "-b", "512", "-tf", dev]).stdout.split()
    assert sorted(listing) == ["big/", "big/data.bin", "big/note.txt", "big/z_after.txt"]


def test_write_protect(array, tmp_path):
    _setup(array)
    dev = _dev(array)
    t = _tree(tmp_path, "p", 100_000)
    _tar_c(dev, t)
    array.vstor("media", "protect", "L", "VT0001L9", "on")
    r = _tar_c(dev, t, check=False)
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    with pytest.raises(OSError) as ei:
        os.close(os.open(dev, os.O_WRONLY))
    assert ei.value.errno == errno.EROFS
    assert "WR_PROT" in _mt(dev, "status").stdout
    _mt(dev, "rewind")
    _extract_same(dev, t, tmp_path / "out")  # reading still works
    shown = _show(array, "VT0001L9")
    assert shown["protect"] is True and shown["files"] == 1
    assert _inv(array)["drive0"] == "VT0001L9"


def test_write_protect_off_allows_writes_again(array, tmp_path):
    _setup(array)
    _mt(_dev(array), "status")  # the drive is in use (its state exists) before the protect on/off
    array.vstor("media", "protect", "L", "VT0001L9", "on")
    array.vstor("media", "protect", "L", "VT0001L9", "off")
    assert _show(array, "VT0001L9")["protect"] is False
    assert "WR_PROT" not in _mt(_dev(array), "status").stdout
    _tar_c(_dev(array), _tree(tmp_path, "q", 10_000))


def test_worm_appends_only_and_cleaning_cartridge(array, tmp_path):
    _setup(array)
    array.vstor("media", "create", "L", "VT0005LW", "CLN001L9", "--capacity", "64M")
    array.vstor("media", "load", "L", "VT0005LW", "--drive", "1")
    dev = _dev(array, 1)
    trees = [_tree(tmp_path, f"w{i}", 200_000) for i in range(3)]
    _tar_c(dev, trees[0])
    _tar_c(dev, trees[1])  # appending at EOD works
    _mt(dev, "rewind")
    r = _tar_c(dev, trees[2], check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    shown = array.vstor_json("media", "show", "L", "VT0005LW", "--verify")
    assert shown["worm"] is True and shown["files"] == 2 and shown["verify"]["damaged"] == []
    assert len(shown["verify"]["chain"]) == 64
    _mt(dev, "rewind")
    _mt(dev, "fsf", "1")
    _extract_same(dev, trees[1], tmp_path / "out")
    array.vstor("media", "unload", "L", "--drive", "1")
    array.vstor("media", "load", "L", "CLN001L9", "--drive", "1")
    for flags in (os.O_RDONLY, os.O_WRONLY):
        with pytest.raises(OSError) as ei:
            os.close(os.open(dev, flags))
        assert ei.value.errno == errno.EBUSY
    assert _mt(dev, "status", check=False).returncode != 0


def test_kill9_mid_archive_keeps_earlier_archives(array, tmp_path):
    _setup(array)
    dev = _dev(array)
    cart = Path(array.pool) / "media" / "L" / "VT0001L9.tape"
    trees = [_tree(tmp_path, f"k{i}", 400_000) for i in range(2)]
    for t in trees:
        _tar_c(dev, t)
    two = cart.stat().st_size
    size = 4_000_000
    big = _tree(tmp_path, "big", size)
    tar = subprocess.Popen(["tar", "-b", "512", "-cf", dev, "-C", str(big.parent), "-T", "-"], stdin=subprocess.PIPE,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tar.stdin.write(b"big/data.bin\n")  # tar archives it, then waits for more names: mid-archive
        tar.stdin.flush()
        # Killed once tar has written every full record of data.bin and waits: a kill -9 during
        # a record's write may tear it (a fatal signal ends a pwrite between pages), and the next
        # load then cuts that unacknowledged record off, rightly; this test is about the idle case.
        full = (512 + -(-size // 512) * 512) // RECORD  # header and data, in whole records
        deadline, sizes = time.monotonic() + 30, [-1, -1]

        def idle() -> bool:  # all full records written, and the cartridge still over three polls
            return sizes[-1] >= two + full * RECORD and sizes[-1] == sizes[-2] == sizes[-3]

        while time.monotonic() < deadline:
            sizes.append(cart.stat().st_size)
            if idle():
                break
            time.sleep(0.1)
        assert idle(), f"tar's third archive did not reach {full} records and stop: {sizes[-1] - two} bytes"
        array.kill9()
    finally:
        tar.stdin.close()
        tar.wait(timeout=30)
    written = cart.stat().st_size
    array.start()
    assert _inv(array)["drive0"] == "VT0001L9"
    shown = _show(array, "VT0001L9")
    assert shown["files"] >= 2 and shown["cut_at_load"] == "" and shown["used"] == written - 64
    st = _mt(dev, "status").stdout
    assert "File number=0, block number=0" in st and "BOT" in st  # after a restart: in the drive, at BOT
    _extract_same(dev, trees[0], tmp_path / "out0")
    _mt(dev, "rewind")
    _mt(dev, "fsf", "1")
    _extract_same(dev, trees[1], tmp_path / "out1")


@pytest.mark.usefixtures("pool_backend")  # the mail slots' moves on a RADOS pool too
def test_library_commands_errors_mail_slots_and_persistence(array, tmp_path):
    _setup(array)
    bad = [  # command, exit code, words in the error line
        (("load", "L", "VT0099L9", "--drive", "0"), 3, "VT0099L9"),
        (("load", "L", "VT0002L9", "--drive", "9"), 3, "no drive 9"),
        (("create", "L", "VT0002L9"), 4, "already exists"),
        (("load", "L", "VT0002L9", "--drive", "0"), 5, "drive is loaded"),
        (("unload", "L", "--drive", "1"), 5, "empty"),
        (("move", "L", "slot8", "slot7"), 5, "empty"),
        (("move", "L", "slot2", "slot3"), 5, "destination is full"),
        (("show", "L", "NOPE01L9"), 3, "NOPE01L9"),
    ]
    for args, code, words in bad:
        r = array.vstor("media", *args, check=False)
        assert words in one_error_line(r, " ".join(args)) and r.returncode == code, (args, r.returncode)
    before = _inv(array)
    assert before["drive0"] == "VT0001L9" and before["slot2"] == "VT0002L9" and before["drive1"] is None
    array.vstor("media", "load", "L", "VT0002L9", "--drive", "1")  # data to carry through the mail slots
    _tar_c(_dev(array, 1), _tree(tmp_path, "m", 50_000))
    array.vstor("media", "unload", "L", "--drive", "1")
    array.vstor("media", "export", "L", "VT0002L9")
    assert _inv(array)["mail1"] == "VT0002L9"
    out = array.vstor_json("media", "import", "L", "--open")
    assert out["removed"] == ["VT0002L9"] and out["mail_open"] is True
    assert "VT0002L9" not in _inv(array).values()
    for args in (("move", "L", "slot3", "mail1"), ("export", "L", "VT0003L9")):
        r = array.vstor("media", *args, check=False)
        assert "mail slots of L are open" in one_error_line(r, f"{args[0]} while the mail door is open")
    out = array.vstor_json("media", "import", "L", "--close")
    assert out["imported"] == ["VT0002L9"] and out["mail_open"] is False
    inv = _inv(array)
    assert "VT0002L9" in [inv[f"slot{i}"] for i in range(1, 9)] and _show(array, "VT0002L9")["files"] == 1
    array.vstor("media", "export", "L", "VT0002L9")
    out = array.vstor_json("media", "import", "L")  # a whole cycle: out through the door, and back in
    assert (out["removed"], out["imported"], out["mail_open"]) == (["VT0002L9"], ["VT0002L9"], False)
    array.vstor("media", "move", "L", "slot3", "1031")
    inv = _inv(array)
    assert inv["slot8"] == "VT0003L9" and inv["slot3"] is None
    array.stop()
    array.start()
    assert _inv(array) == inv
    r = array.vstor("media", "unload", "L", "--drive", "0")
    assert "VT0001L9" in r.stdout and _inv(array)["drive0"] is None


def test_create_with_a_repeated_barcode_changes_nothing(array):
    _setup(array)
    r = array.vstor("media", "create", "L", "VT0009L9", "VT0009L9", check=False)
    assert "VT0009L9 is given twice" in one_error_line(r, "repeated barcode") and r.returncode == 4
    assert "VT0009L9" not in _inv(array).values()


def test_failed_import_keeps_the_shelf_medium(array, tmp_path):
    _setup(array)
    array.vstor("media", "load", "L", "VT0002L9", "--drive", "1")
    _tar_c(_dev(array, 1), _tree(tmp_path, "s", 50_000))
    array.vstor("media", "unload", "L", "--drive", "1")
    array.vstor("media", "export", "L", "VT0002L9")
    array.vstor("media", "import", "L", "--open")
    array.vstor("media", "create", "L", "VT0002L9", "--capacity", "64M")  # a new cartridge, same barcode
    assert _show(array, "VT0002L9")["files"] == 0
    r = array.vstor("media", "import", "L", "--close", check=False)
    assert "VT0002L9" in one_error_line(r, "import of a duplicate barcode") and r.returncode == 4
    assert _show(array, "VT0002L9")["files"] == 0  # the library's cartridge is not replaced ...
    assert (Path(array.pool) / "media" / "L" / "shelf" / "VT0002L9.tape").exists()  # ... the shelf's one stays


def test_partitions_with_mt_mkpartition_and_setpartition(array, tmp_path):
    _setup(array)
    dev = _dev(array)
    _tar_c(dev, _tree(tmp_path, "gone", 4096))  # MTMKPART erases the tape
    _mt(dev, "rewind")
    _mt(dev, "mkpartition", "16")  # partition 1 of 16 MiB, partition 0 the rest
    assert _show(array, "VT0001L9")["partitions"] == 2 and _show(array, "VT0001L9")["files"] == 0
    p1, p0 = _tree(tmp_path, "index", 8192), _tree(tmp_path, "data", 300_000)
    _mt(dev, "setpartition", "1")
    _tar_c(dev, p1)
    assert "partition=1" in _mt(dev, "status").stdout
    _mt(dev, "setpartition", "0")
    st = _mt(dev, "status").stdout
    assert "partition=0" in st and "File number=0, block number=0" in st
    _tar_c(dev, p0)
    array.stop()
    array.start()  # partitions and their contents survive a restart
    _mt(dev, "setpartition", "1")
    _extract_same(dev, p1, tmp_path / "out1")
    _mt(dev, "setpartition", "0")
    _extract_same(dev, p0, tmp_path / "out0")
    assert _mt(dev, "setpartition", "2", check=False).returncode != 0  # only two partitions
