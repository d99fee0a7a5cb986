"""``backup catalog rebuild`` brings a client job back whole: its file list (metadata, sha256,
extents, stream positions), the entries an incremental carries over from its base, and its
deletions, read from the pax stream and manifest on tape (client/array/listing.py, relist.py).

The end-to-end test runs over real TLS on loopback with an emulated tape library and an
encrypted policy; the pure tests build streams with the array's own Session and damage them
byte by byte."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tarfile

import pytest
from clientkit import Lab, allocated, make_tree
from poolkit import MiB

from vstor.backup.catalog import BackupCatalog
from vstor.backup.client import agent, wire
from vstor.backup.client.array import archive
from vstor.backup.client.array.listing import read_listing
from vstor.backup.client.array.relist import relist
from vstor.backup.client.array.session import Session
from vstor.backup.engine import BackupEngine
from vstor.clock import ManualClock
from vstor.errors import CorruptData
from vstor.media import tapedrive as td


def _rows(lab: Lab, job: int) -> tuple:
    cat = lab.engine.catalog
    j = cat.job(job)
    fields = {k: j[k] for k in ("policy", "level", "source", "base_job", "key_id", "bytes", "stored", "sha256")}
    return cat.client_files(job), cat.client_deleted(job), fields, j["parts"]


def _lose_the_catalog(lab: Lab) -> None:
    lab.engine.close()
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(lab.pool, "backup", "catalog.db" + suffix))
    lab.engine = BackupEngine(lab.store, lab.media, clock=lab.clock, faults=lab.faults)
    lab.clients = lab.engine.clients
    assert lab.engine.catalog.jobs() == []


def _flipped(block: bytes, at: int) -> bytes:
    b = bytearray(block)
    b[at] ^= 0x04
    return bytes(b)


def _rewrite(lab: Lab, part: dict, change) -> list[bytes]:  # noqa: ANN001
    """Rewrite the data blocks of ``part`` (the last tape file on its cartridge) as ``change``
    makes them from the blocks as stored (sealed), as a tape tool would; returns the old ones."""
    carts = lab.clients._cartridges("lib")
    try:
        drive = carts.load_for_read(part["barcode"])
        drive.op(td.MTREW, 1)
        drive.op(td.MTFSF, part["file"])
        blocks = list(iter(lambda: drive.read(4 * MiB), b""))[1:]
        drive.op(td.MTREW, 1)
        drive.op(td.MTFSF, part["file"])
        drive.op(td.MTFSR, 1)
        for b in change(blocks):
            drive.write(b)
        drive.op(td.MTWEOF, 1)
    finally:
        carts.release()
    return blocks


def test_rebuild_brings_back_client_jobs_whole_and_restores_one_file(tmp_path):
    lab = Lab(tmp_path, encrypt=True)
    try:
        src = make_tree(str(tmp_path / "src"), files=30, seed=5)
        lab.clients.register("c1", paths=[src])
        lab.policy(level="incremental", encrypt=True)
        full = agent.push(lab.address, lab.tls, "c1", [src])
        lab.clock.advance(3600)
        os.unlink(os.path.join(src, "empty"))
        os.unlink(os.path.join(src, "link-dangling"))
        os.mkdir(os.path.join(src, "newdir"))
        odd = os.path.join(os.fsencode(src), b"newdir", b"sparse-\xe9\xff")  # a new sparse file, a non-UTF-8 name
        with open(odd, "wb") as f:
            f.truncate(9 * MiB)
            f.seek(4 * MiB)
            f.write(b"x" * 70_000)
        os.link(odd, os.path.join(os.fsencode(src), b"newdir", b"z-hard-to-sparse"))
        inc = agent.push(lab.address, lab.tls, "c1", [src])
        assert inc["level"] == "incremental" and inc["deleted"] == 2, inc
        jobs = [full["job"], inc["job"]]
        before = {j: _rows(lab, j) for j in jobs}
        files = before[inc["job"]][0]
        kinds = {f["type"] for f in files}
        assert kinds == {"file", "dir", "symlink", "hardlink"} and {f["change"] for f in files} == {
            "new", "changed", "same"}
        new_sparse = next(f for f in files if f["path"] == os.fsdecode(odd))
        assert new_sparse["change"] == "new" and len(new_sparse["extents"]) == 1 and new_sparse["size"] == 9 * MiB
        assert before[full["job"]][2]["key_id"] and len(before[inc["job"]][1]) == 2

        _lose_the_catalog(lab)
        r = lab.engine.rebuild("lib")
        assert r["jobs"] == jobs and not r["problems"], r
        for j in jobs:
            assert _rows(lab, j) == before[j], j
        assert lab.engine.rebuild("lib")["problems"] == []  # idempotent

        out = str(tmp_path / "out")
        res = lab.clients.restore(inc["job"], to=out, files=os.path.join(src, "newdir", "sparse-*"))
        assert res["files"] == 1 and res["read_bytes"] < 2 * MiB, res
        with open(odd, "rb") as a, open(os.fsencode(out) + odd, "rb") as b:
            assert a.read() == b.read()
        assert os.stat(os.fsencode(out) + odd).st_mtime_ns == os.stat(odd).st_mtime_ns
        assert allocated(os.fsencode(out) + odd) < 1 * MiB

        # A damaged record on tape: the job is a problem and records no rows; its base is whole.
        part = before[inc["job"]][3][-1]
        blocks = _rewrite(lab, part, lambda blocks: [_flipped(blocks[0], 700), *blocks[1:]])  # a pax header's
        _lose_the_catalog(lab)
        r = lab.engine.rebuild("lib")
        assert len(r["problems"]) == 1 and r["problems"][0].startswith(f"job {inc['job']}: "), r
        assert _rows(lab, full["job"]) == before[full["job"]]
        assert lab.engine.catalog.client_files(inc["job"]) == [] and not lab.engine.catalog.client_deleted(inc["job"])
        assert lab.engine.catalog.job(inc["job"])["verify"] == "failed"
        _rewrite(lab, part, lambda _: blocks)  # the record put right: a rebuild run again completes the job
        assert lab.engine.rebuild("lib")["problems"] == []
        # (the part's hash stays the damaged one the first rebuild read: 'backup verify' would say so)
        assert _rows(lab, inc["job"])[:2] == before[inc["job"]][:2]
        assert lab.engine.catalog.job(inc["job"])["verify"] is None
    finally:
        lab.close()


# -- the stream read back, pure ------------------------------------------------------------------

def _entry(path: str, kind: str, size: int = 0, extents: list = (), link: str = "", mtime_ns: int = 1, **kw) -> dict:
    e = {"path": path, "type": kind, "size": size, "mode": 0o640, "uid": 1000, "gid": 1000, "user": "ann",
         "group": "staff", "mtime_ns": mtime_ns, "atime_ns": 1_700_000_000_000_000_001, "link": link,
         "extents": list(extents)}
    return e | kw


def _stream(entries: list[tuple[dict, bytes]], job: int = 9, base: list[dict] | None = None,
            deleted: list[str] = ()) -> tuple[bytes, list[dict]]:
    """The pax stream the array writes for ``entries`` (entry, extents' bytes), through its Session."""
    frames = []
    for e, data in entries:
        frames.append((wire.FILE, wire.dumps(e)))
        if e["type"] == "file":
            frames += [(wire.DATA, data[i : i + 1000]) for i in range(0, len(data), 1000)]
            h = hashlib.sha256()
            pos = 0
            for (off, n) in e["extents"]:
                h.update(bytes(off - pos) + data[:n])
                data, pos = data[n:], off + n
            h.update(bytes(e["size"] - pos))
            frames.append((wire.FEND, wire.dumps({"sha256": h.hexdigest()})))
    if deleted:
        frames.append((wire.DELETED, wire.dumps({"paths": list(deleted)})))
    frames.append((wire.END, wire.dumps({"files": len(entries)})))
    out = bytearray()
    it = iter(frames)
    s = Session(job, lambda: next(it), out.extend, [], None, base)
    s.run()
    return bytes(out), [e for e, _ in s.done]


ENTRIES = [
    (_entry("/srv", "dir"), b""),
    (_entry("/srv/a.txt", "file", 5, [(0, 5)], mtime_ns=1_500_000_000_987_654_321), b"hello"),
    (_entry("/srv/\udce9t\udcff", "file", 3 << 20, [(1 << 20, 1000), (2 << 20, 512)]), b"s" * 1512),
    (_entry("/srv/" + "long-name-" * 20, "symlink", link="../\udc80target"), b""),
    (_entry("/srv/hard", "hardlink", link="/srv/a.txt"), b""),
    (_entry("/srv/empty", "file", 0, [], user="", group="", uid=70000000, gid=0), b""),
    (_entry("/srv/holes", "file", 4096, []), b""),
]


def test_the_listing_is_what_the_session_recorded():
    stream, done = _stream(ENTRIES, deleted=[])
    listing = read_listing([stream[i : i + 777] for i in range(0, len(stream), 777)], 9)
    assert listing.version == archive.MANIFEST_VERSION and listing.deleted == []
    want = [{k: (list(map(list, v)) if k == "extents" else v) for k, v in e.items() if k not in ("src_job", "change")}
            for e in done]
    got = [e | {"extents": [list(x) for x in e["extents"]]} for e in listing.entries]
    assert got == want
    assert [e["offset"] for e in got] == sorted(e["offset"] for e in got) and got[2]["data_offset"] > got[2]["offset"]


def test_an_incrementals_deletions_are_on_the_media():
    base = [e | {"sha256": None, "src_job": 8, "offset": 0, "data_offset": 512, "change": "new"}
            for e, _ in ENTRIES[:3]] + [_entry("/srv/gone", "dir") | {"sha256": None, "src_job": 8, "offset": 0,
                                                                      "data_offset": 512, "change": "new"}]
    stream, _ = _stream(ENTRIES[1:2], base=base, deleted=["/srv/gone"])
    assert read_listing([stream], 9).deleted == ["/srv/gone"]


def _flip(stream: bytes, at: int) -> list[bytes]:
    b = bytearray(stream)
    b[at] ^= 0x01
    return [bytes(b)]


@pytest.mark.parametrize("where", ["a pax time", "a ustar header", "file data", "a sparse map", "the manifest"])
def test_a_changed_byte_anywhere_is_corrupt_data(where):
    stream, done = _stream(ENTRIES)
    sparse = done[2]
    at = {"a pax time": stream.index(b"mtime=1500000000.987654321") + 20,
          "a ustar header": done[5]["data_offset"] - 512 + 120,  # its gid field
          "file data": done[1]["data_offset"] + 1,
          "a sparse map": sparse["data_offset"] - 512 + 3,
          "the manifest": stream.index(b'"headers_sha256"') + 2}[where]
    with pytest.raises(CorruptData):
        read_listing(_flip(stream, at), 9)


def test_a_cut_stream_or_another_jobs_is_corrupt_data():
    stream, _ = _stream(ENTRIES)
    with pytest.raises(CorruptData, match="cut short"):
        read_listing([stream[: len(stream) // 2]], 9)
    with pytest.raises(CorruptData, match="job 9's, not job 10's"):
        read_listing([stream], 10)
    with pytest.raises(CorruptData):
        read_listing([b""], 9)


def _version_1(stream: bytes, done: list[dict]) -> bytes:
    """``stream`` with the manifest a vstor before manifest version 2 wrote: [path, sha256] lines."""
    lines = b"".join(json.dumps([e["path"], e["sha256"]], ensure_ascii=True).encode() + b"\n"
                     for e in done if e["type"] == "file")
    ti = tarfile.TarInfo(archive.MANIFEST)
    ti.size, ti.mode = len(lines), 0o600
    old = stream[: stream.index(archive.MANIFEST.encode())]  # its header block starts with its name
    return old + ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + lines + bytes(-len(lines) % 512 + 1024)


def test_a_version_1_stream_still_reads_without_its_deletions():
    stream, done = _stream(ENTRIES)
    listing = read_listing([_version_1(stream, done)], 9)
    assert listing.version == 1 and listing.deleted is None and len(listing.entries) == len(done)


def test_relist_carries_the_base_over_and_says_what_a_version_1_stream_cannot_give(tmp_path):
    cat = BackupCatalog(str(tmp_path / "catalog.db"), ManualClock())
    try:
        def job(level: str = "full", base: int | None = None) -> int:
            j = cat.new_job("p", level, "client:c1", base, None, 1e12)
            cat.set_job(j, status="done")
            return j

        full = job()
        stream, _ = _stream(ENTRIES, job=full)
        assert relist(cat, cat.job(full), iter([stream])) == []
        base = cat.client_files(full)
        changed = [(ENTRIES[1][0] | {"mtime_ns": 5}, b"HELLO")]
        for version in (2, 1):
            inc = job("incremental", full)
            stream, done = _stream(changed, job=inc, base=base, deleted=["/srv/empty"])
            problems = relist(cat, cat.job(inc), iter([stream if version == 2 else _version_1(stream, done)]))
            files = {f["path"]: f for f in cat.client_files(inc)}
            assert files["/srv/a.txt"]["change"] == "changed" and files["/srv/a.txt"]["src_job"] == inc
            assert files["/srv/hard"] == next(f for f in base if f["path"] == "/srv/hard") | {"change": "same"}
            if version == 2:
                assert not problems and cat.client_deleted(inc) == ["/srv/empty"] and "/srv/empty" not in files
            else:
                assert problems == [f"job {inc}: its stream (client manifest version 1) does not list the files "
                                    f"deleted since job {full}: its file list carries them over as if they were kept"]
                assert files["/srv/empty"]["change"] == "same" and cat.client_deleted(inc) == []
            assert relist(cat, cat.job(inc), iter([b"never read"])) == []  # has a list: left as it is
        orphan = job("incremental", job())  # its base job has no file list
        problems = relist(cat, cat.job(orphan), iter([_stream(changed, job=orphan, base=base)[0]]))
        assert len(problems) == 1 and "has no file list" in problems[0] and cat.client_files(orphan) == []
        assert cat.job(orphan)["verify"] == "failed"
    finally:
        cat.close()
