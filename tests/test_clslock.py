"""The pool lock's bytes (vstor/store/backend/rados/clslock.py): the cls_lock inputs python3-rados
cannot build, laid out as Ceph decodes them (cls_lock_ops.h), and the holder record that
tells a takeover whom to fence. Pure: no cluster (the RADOS tests prove the OSD takes them)."""

from __future__ import annotations

import json
import struct

from vstor.store.backend.rados.clslock import (
    ENTITY_CLIENT,
    FLAG_MUST_RENEW,
    LOCK_EXCLUSIVE,
    encode_break_op,
    encode_lock_op,
    holder_addrs,
    pack_holder,
    unpack_holder,
)


def _strings(buf: bytes, at: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", buf, at)
    return buf[at + 4:at + 4 + n].decode(), at + 4 + n


def test_lock_op_is_a_versioned_struct_ceph_decodes() -> None:
    b = encode_lock_op("vstor-owner", "host:1:abc", "vstor daemon pid 1", 30, FLAG_MUST_RENEW)
    version, compat, length = struct.unpack_from("<BBI", b)
    assert (version, compat, length) == (1, 1, len(b) - 6)
    name, at = _strings(b, 6)
    assert name == "vstor-owner" and b[at] == LOCK_EXCLUSIVE
    cookie, at = _strings(b, at + 1)
    tag, at = _strings(b, at)
    desc, at = _strings(b, at)
    assert (cookie, tag, desc) == ("host:1:abc", "", "vstor daemon pid 1")
    assert struct.unpack_from("<IIB", b, at) == (30, 0, FLAG_MUST_RENEW)  # utime_t seconds, nanoseconds; flags
    assert at + 9 == len(b)


def test_break_op_names_the_locker_as_entity_and_cookie() -> None:
    b = encode_break_op("vstor-owner", 4123, "c")
    assert b.hex() == ("0101" "1d000000" "0b000000" + b"vstor-owner".hex()  # struct header, then the name
                       + "08" + struct.pack("<q", 4123).hex()  # entity_name_t: client.4123
                       + "01000000" + b"c".hex())
    assert b[6 + 4 + 11] == ENTITY_CLIENT


def test_addresses_from_get_addrs_in_every_form() -> None:
    assert holder_addrs("[v2:127.0.0.1:0/3310,v1:127.0.0.1:0/3310]") == ["127.0.0.1:0/3310"]
    assert holder_addrs("v2:10.0.0.5:0/42") == ["10.0.0.5:0/42"]
    assert holder_addrs("any:[::1]:0/7") == ["[::1]:0/7"]
    assert holder_addrs("[]") == []


def test_holder_record_round_trip_and_damage() -> None:
    raw = pack_holder("vstor daemon pid 7 on a", "a:7:x", 4123, ["127.0.0.1:0/9"], "a", 7, 1700000000.12345)
    rec = unpack_holder(raw)
    assert rec is not None
    assert (rec["client"], rec["client_id"], rec["addrs"], rec["cookie"]) == ("client.4123", 4123, ["127.0.0.1:0/9"],
                                                                              "a:7:x")
    doc = json.loads(raw)
    doc["addrs"] = ["127.0.0.1:0/10"]  # another client to fence: the checksum no longer matches
    assert unpack_holder(json.dumps(doc).encode()) is None
    assert unpack_holder(b"vstor daemon pid 7 on a (cookie a:7:x)") is None  # an older daemon's plain text
    assert unpack_holder(raw.replace(b'"version":1', b'"version":2')) is None
