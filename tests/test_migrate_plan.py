"""pool migrate's pure parts: which pool files are segments, blobs, superblocks, other files or
host-only, the in-progress marker, and the progress lines (bytes/s) on the injected clock.
Also the striped-blob head format (rados/blob.py). No cluster needed."""

from __future__ import annotations

import errno

import pytest

from vstor.clock import ManualClock
from vstor.store.backend.rados.blob import HEAD_SIZE, Head, decode_head, encode_head
from vstor.store.migrate.plan import Meter, classify, decode_marker, encode_marker, segment_number


def test_every_pool_file_has_its_kind() -> None:
    assert classify("pool.json") == classify("meta/superblock.copy") == "superblock"
    assert classify("meta/checkpoint.a") == classify("meta/checkpoint.b") == classify("meta/checkpoint") == "blob"
    assert classify("journal/0000000007.seg") == "segment" and segment_number("journal/0000000007.seg") == 7
    for host_only in ("lock", "control.sock", "meta/checkpoint.a.tmp", "journal/0000000007.seg.tmp", "journal/x"):
        assert classify(host_only) == "skip", host_only
    for other in ("meta/consumers.json", "meta/consumers.json.copy", "meta/pairs/1.json", "backup/catalog.db",
                  "media/lib/B1.tape", "log/daemon.log", "meta/nbd_exports.json"):
        assert classify(other) == "other", other
    assert segment_number("journal/7.seg") is None and segment_number("meta/0000000007.seg") is None


def test_the_marker_round_trips_and_a_damaged_one_is_not_taken() -> None:
    raw = encode_marker("/srv/pool", "0f" * 16, 1700000000.5)
    doc = decode_marker(raw)
    assert doc is not None and doc["source"] == "/srv/pool" and doc["uuid"] == "0f" * 16
    assert decode_marker(raw.replace(b"/srv/pool", b"/srv/poox")) is None  # the checksum sees it
    assert decode_marker(b"not json") is None and decode_marker(b"[]") is None


def test_progress_lines_every_interval_with_the_rate() -> None:
    clock, lines = ManualClock(0.0), []
    meter = Meter(100 << 20, clock, lines.append, every=5.0)
    meter.add(10 << 20)
    clock.advance(4.0)
    meter.add(10 << 20)
    assert lines == []  # not yet 5 s
    clock.advance(1.0)
    meter.add(30 << 20)  # 50 MiB in 5 s
    assert lines == ["migrate: 50M of 100M copied (50%), 10M/s"]
    clock.advance(5)
    assert meter.done() == pytest.approx(5 << 20) and lines[-1] == "migrate: 50M of 100M copied (50%), 5M/s"


def test_the_striped_blob_head_is_checked() -> None:
    head = Head(b"\x01" * 8, 300_000, 65536, 5, 1234)
    raw = encode_head(head)
    assert len(raw) == HEAD_SIZE and decode_head(raw, "x") == head
    assert head.stripe_name("meta/checkpoint.a", 4) == ".striped/meta/checkpoint.a/0101010101010101.0004"
    bad = bytearray(raw)
    bad[20] ^= 1
    with pytest.raises(OSError) as e:
        decode_head(bytes(bad), "meta/checkpoint.a")
    assert e.value.errno == errno.EIO and "checksum" in str(e.value)
    with pytest.raises(OSError):
        decode_head(encode_head(Head(b"\x01" * 8, 300_000, 65536, 4, 1234)), "x")  # count does not fit length
