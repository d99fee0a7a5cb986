"""The NBD server in process, over a Store in tmp_path, driven by libnbd (python3-libnbd),
qemu-img and a raw socket for what libnbd will not send."""

from __future__ import annotations

import errno
import os
import random
import shutil
import socket
import subprocess
import threading
import time

import pytest
from nbdkit import MiB, Raw, handle, nbd, served

from vstor.clock import ManualClock
from vstor.faults import Faults
from vstor.nbd import proto as P
from vstor.store.allocation import mapped_ranges
from vstor.store.catalog import snapshots
from vstor.store.store import Store

pytestmark = pytest.mark.skipif(nbd is None, reason="needs python3-libnbd (make setup)")


def extents(h, length: int, offset: int = 0, flags: int = 0) -> list[tuple[int, int]]:
    out: list[int] = []
    h.block_status(length, offset, lambda meta, off, e, err: out.extend(e), flags)
    return list(zip(out[::2], out[1::2], strict=True))


def test_options_flags_and_data_path(tmp_path) -> None:
    with served(tmp_path, volumes={"vol": 64 * MiB, "other": 8 * MiB}) as s:
        s.export("vol")
        s.export("other")
        s.start()
        h = handle()
        h.set_opt_mode(True)
        h.connect_uri(s.uri("vol"))
        names: list[str] = []
        h.opt_list(lambda name, desc: names.append(name))
        assert sorted(names) == ["other", "vol"]
        ctxs: list[str] = []
        h.opt_list_meta_context(lambda name: ctxs.append(name))
        assert ctxs == ["base:allocation"]
        h.opt_info()
        assert h.get_size() == 64 * MiB
        h.opt_go()
        assert h.get_structured_replies_negotiated()
        assert h.can_meta_context("base:allocation")
        for can in (h.can_flush, h.can_fua, h.can_trim, h.can_zero, h.can_fast_zero, h.can_multi_conn, h.can_df,
                    h.can_cache):
            assert can(), can.__name__
        assert not h.is_read_only()
        assert (h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED),
                h.get_block_size(nbd.SIZE_MAXIMUM)) == (1, 4096, 32 * MiB)
        data = os.urandom(MiB)
        h.pwrite(data, 5 * MiB + 3)
        h.pwrite(data[:4096], 0, nbd.CMD_FLAG_FUA)
        h.flush()
        assert h.pread(MiB, 5 * MiB + 3) == data
        assert h.pread(32 * MiB, 0)[:4096] == data[:4096]  # a maximum-size read
        h.cache(MiB, 0)
        k = 65536
        h.trim(k, 5 * MiB + 2 * k)
        h.zero(4096, 5 * MiB + 8 * k, nbd.CMD_FLAG_FAST_ZERO)
        h.zero(4096, 5 * MiB + 10 * k, nbd.CMD_FLAG_NO_HOLE)
        assert h.pread(k, 5 * MiB + 2 * k) == bytes(k)
        assert h.pread(4096, 5 * MiB + 10 * k) == bytes(4096)
        # block status is the volume's real allocation
        vid = s.store.volume("vol").id
        want, at = [], 0
        for a, b in mapped_ranges(s.store, vid, 0, 64 * MiB):
            if a > at:
                want.append((a - at, 3))
            want.append((b - a, 0))
            at = b
        want.append((64 * MiB - at, 3))
        assert extents(h, 64 * MiB) == want
        assert [f for _, f in want] == [0, 3] * 5
        assert extents(h, 64 * MiB, 0, nbd.CMD_FLAG_REQ_ONE) == [want[0]]
        h.shutdown()
        assert s.server.export_stats()["vol"]["bytes_written"] == MiB + 4096


def test_several_requests_in_flight_and_multi_conn(tmp_path) -> None:
    with served(tmp_path) as s:
        s.export("vol")
        s.start()
        a, b, c = (handle(s.uri("vol")) for _ in range(3))
        bufs = [os.urandom(64 * 1024) for _ in range(64)]
        cookies = [a.aio_pwrite(buf, i * 65536) for i, buf in enumerate(bufs)]
        while any(not a.aio_command_completed(ck) for ck in cookies if ck):
            a.poll(-1)
            cookies = [ck for ck in cookies if not a.aio_command_completed(ck)]
        b.flush()  # multi-conn: a flush on B makes A's answered writes durable and visible on C
        assert c.pread(64 * 65536, 0) == b"".join(bufs)
        bufs16 = [nbd.Buffer(65536) for _ in range(16)]  # queued together: served by the pool, out of order
        pending = [a.aio_pread(buf, i * 65536) for i, buf in enumerate(bufs16)]
        fl = a.aio_flush()
        while pending or not a.aio_command_completed(fl):
            a.poll(-1)
            pending = [ck for ck in pending if not a.aio_command_completed(ck)]
        assert [bytes(buf.to_bytearray()) for buf in bufs16] == bufs[:16]
        for h in (a, b, c):
            h.shutdown()


def test_errors_from_libnbd_with_strict_mode_off(tmp_path) -> None:
    with served(tmp_path) as s:
        s.export("vol")
        s.export("ro", "vol", read_only=True)
        s.start()
        h = handle(s.uri("vol"))
        h.set_strict_mode(0)
        for call, err in ((lambda: h.pread(4096, 64 * MiB - 1), errno.EINVAL),
                          (lambda: h.pwrite(b"x" * 2, 64 * MiB - 1), errno.ENOSPC),
                          (lambda: h.pread(512, 0, 0x80), errno.EINVAL),
                          (lambda: h.trim(2, 64 * MiB - 1), errno.EINVAL)):
            with pytest.raises(nbd.Error) as e:
                call()
            assert e.value.errno == errno.errorcode[err]
        h.shutdown()
        r = handle(s.uri("ro"))
        assert r.is_read_only() and not r.can_trim()
        r.set_strict_mode(0)
        for call in (lambda: r.pwrite(b"x", 0), lambda: r.trim(4096, 0), lambda: r.zero(4096, 0)):
            with pytest.raises(nbd.Error) as e:
                call()
            assert e.value.errno == "EPERM"
        r.shutdown()
        with pytest.raises(nbd.Error, match="no export named 'nope'"):
            handle(s.uri("nope"))  # libnbd: "server has no export named 'nope'"


def test_raw_protocol_errors(tmp_path) -> None:
    with served(tmp_path) as s:
        s.export("vol")
        s.start()
        c = Raw(s.port)
        assert c.option(0x7654321)[0][0] == P.REP_ERR_UNSUP  # the session goes on
        assert c.option(P.OPT_LIST, b"x")[0][0] == P.REP_ERR_INVALID
        assert c.option(P.OPT_SET_META_CONTEXT, P.meta_request("vol", ["base:"]))[0][0] == P.REP_ERR_INVALID
        assert c.option(P.OPT_GO, P.info_request("nope"))[-1][0] == P.REP_ERR_UNKNOWN
        c.go("vol")  # simple replies
        assert c.simple(P.CMD_BLOCK_STATUS, 7, 0, 4096) == (P.EINVAL, 7)  # no structured replies, no context
        assert c.simple(42, 8) == (P.EINVAL, 8)
        assert c.simple(P.CMD_WRITE, 9, 0, 4, data=b"abcd") == (0, 9)
        assert c.simple(P.CMD_READ, 10, 0, 4) == (0, 10)
        c.s.sendall(P.request(P.CMD_DISC, 11))
        assert c.closed()  # no reply to DISC
        c.close()
        bad = Raw(s.port)
        bad.s.sendall(b"\xff" * 16)  # bad option magic: dropped
        assert bad.closed()
        bad.close()
        flags = Raw(s.port, flags=0x80)  # an unknown client flag closes
        assert flags.closed()
        flags.close()
        old = Raw(s.port, flags=P.FLAG_FIXED_NEWSTYLE)  # EXPORT_NAME, with the 124 zero bytes
        old.s.sendall(P.option_request(P.OPT_EXPORT_NAME, b"vol"))
        reply = old.recv(8 + 2 + 124)
        assert int.from_bytes(reply[:8], "big") == 64 * MiB and reply[10:] == bytes(124)
        old.close()
        half = Raw(s.port)  # a client that dies half-way through a write's payload
        half.go("vol")
        half.s.sendall(P.request(P.CMD_WRITE, 12, 0, 65536) + b"z" * 100)
        half.close()
        magic = Raw(s.port)  # garbage instead of a request: dropped
        magic.go("vol")
        magic.s.sendall(b"\x00" * 28)
        assert magic.closed()
        magic.close()
        h = handle(s.uri("vol"))  # still serving, and the half write never landed
        assert h.pread(4, 0) == b"abcd"
        h.shutdown()


def test_fuzzed_negotiation_leaves_the_server_serving(tmp_path) -> None:
    rng = random.Random(2026)
    with served(tmp_path, handshake_timeout=2.0) as s:
        s.export("vol")
        s.start()
        good = [P.option_request(P.OPT_STRUCTURED_REPLY), P.option_request(P.OPT_LIST),
                P.option_request(P.OPT_GO, P.info_request("vol", (1, 3))),
                P.option_request(P.OPT_SET_META_CONTEXT, P.meta_request("vol", ["base:allocation"]))]
        for _ in range(300):
            msg = bytearray(b"".join(rng.sample(good, rng.randint(1, 4))))
            for _ in range(rng.randint(1, 6)):
                pos = rng.randrange(len(msg))
                msg[pos] = rng.randrange(256)
            if rng.random() < 0.3:
                msg = msg[: rng.randrange(len(msg))]
            sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
            try:
                sock.recv(18)
                sock.sendall(rng.choice([b"\0\0\0\x03", b"\0\0\0\x01", os.urandom(4)]) + bytes(msg))
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
            except OSError:
                pass
            finally:
                sock.close()
        h = handle(s.uri("vol"))
        h.pwrite(b"alive", 0)
        assert h.pread(5, 0) == b"alive"
        h.shutdown()
        assert s.server.describe()["state"] == "serving"


def test_snapshot_export_is_read_only_and_keeps_its_data(tmp_path) -> None:
    with served(tmp_path) as s:
        s.store.write(s.store.volume("vol").id, 0, b"before" * 1000)
        snap = snapshots.create(s.store, "vol", "s1")
        s.store.write(s.store.volume("vol").id, 0, b"after!" * 1000)
        s.export("vsnap", snapshot=f"vol/{snap['name']}/vol", read_only=True)
        s.start()
        h = handle(s.uri("vsnap"))
        assert h.is_read_only()
        assert h.pread(6000, 0) == b"before" * 1000
        assert extents(h, 64 * MiB)[0] == (6000, 0)
        h.set_strict_mode(0)
        with pytest.raises(nbd.Error) as e:
            h.pwrite(b"x", 0)
        assert e.value.errno == "EPERM"
        h.shutdown()


def test_locally_attached_volume_refuses_writable_unless_shared(tmp_path) -> None:
    with served(tmp_path) as s:
        s.export("vol")
        s.export("shared", "vol", shared=True)
        s.start()
        s.in_use[s.store.volume("vol").id] = 1
        with pytest.raises(nbd.Error, match="policy"):
            handle(s.uri("vol"))
        handle(s.uri("shared")).shutdown()


def test_array_stop_soft_disconnects_and_keeps_flushed_writes(tmp_path) -> None:
    faults = Faults()
    with served(tmp_path, faults=faults) as s:
        s.export("vol")
        s.start()
        h = handle(s.uri("vol"))
        h.pwrite(b"durable!", 0)
        h.flush()
        faults.arm("nbd.request", "delay")  # the next request is still in flight when the stop begins
        slow = h.aio_pwrite(b"inflight", 4096)
        until(lambda: s.server.export_stats()["vol"]["ops"] == 3)  # the server is serving it (slowly)
        stopper = threading.Thread(target=s.server.stop, kwargs={"grace": 5.0})
        stopper.start()
        assert s.server.closing.wait(5)
        with pytest.raises(nbd.Error) as e:  # a new request: "the array is stopping"
            h.pread(8, 0)
        assert e.value.errno == "ESHUTDOWN"
        while not h.aio_command_completed(slow):  # the one in flight finished normally
            h.poll(-1)
        stopper.join(10)
        assert not stopper.is_alive()
        s.server = None
        s.store.close()
        s.store = Store.open(s.pool)  # reopened: replayed from the journal
        assert s.store.read(s.store.volume("vol").id, 0, 8) == b"durable!"
        assert s.store.read(s.store.volume("vol").id, 4096, 8) == b"inflight"  # stop synced before closing


def test_idle_client_is_closed_at_once_by_stop(tmp_path) -> None:
    with served(tmp_path) as s:
        s.export("vol")
        s.start()
        h = handle(s.uri("vol"))
        t0 = time.monotonic()
        s.server.stop(grace=5.0)
        assert time.monotonic() - t0 < 2.0
        with pytest.raises(nbd.Error):
            h.pread(8, 0)
        s.server = None


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img (make setup)")
def test_qemu_img_convert_in_and_out_and_compare(tmp_path) -> None:
    src, back = tmp_path / "src.raw", tmp_path / "back.raw"
    with open(src, "wb") as f:
        for i in range(0, 32, 4):  # sparse: 1 MiB of data every 4 MiB
            f.seek(i * MiB)
            f.write(os.urandom(MiB))
        f.truncate(32 * MiB)
    with served(tmp_path, volumes={"vol": 32 * MiB}) as s:
        s.export("vol")
        s.start()
        uri = s.uri("vol")
        subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), uri], check=True)
        subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), uri], check=True)
        assert s.store.volume_usage(s.store.volume("vol").id) == 8 * MiB  # holes stayed holes
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(back)], check=True)
        subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), str(back)], check=True)
        assert os.stat(back).st_blocks * 512 <= 9 * MiB  # qemu-img skipped the holes block status reported


def test_handshakes_are_capped_and_reaped_and_accept_errors_survived(tmp_path) -> None:
    clock, faults = ManualClock(), Faults()
    with served(tmp_path, clock=clock, cap=3, handshake_timeout=5.0, faults=faults) as s:
        s.export("vol")
        srv = s.start()
        idle = [Raw(s.port) for _ in range(3)]  # hello read, flags sent, then nothing
        until(lambda: srv.describe()["pending"] == 3)
        extra = [socket.create_connection(("127.0.0.1", s.port), timeout=5) for _ in range(4)]
        for x in extra:  # over the cap: closed at once, before the hello
            assert x.recv(18) == b""
            x.close()
        until(lambda: srv.describe()["rejected_busy"] == 4)
        clock.advance(4.9)
        assert srv.reap() == 0
        clock.advance(0.2)
        assert srv.reap() == 3
        assert all(c.closed() for c in idle)
        # A failed accept is logged and accepting goes on. The loop may sit in accept() for a tick
        # when the fault is armed, so it fails on its next pass: wait for that before connecting.
        faults.arm("nbd.accept", "eio", 1, repeat=False)
        until(lambda: srv.describe()["accept_errors"] == 1)
        h = handle(s.uri("vol"))
        assert h.pread(1, 0) == b"\0"
        h.shutdown()
        d = srv.describe()
        assert (d["state"], d["handshake_timeouts"], d["accept_errors"]) == ("serving", 3, 1)


def until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_replication_secondary_exports_read_only(tmp_path) -> None:
    with served(tmp_path) as s:
        s.export("vol")
        s.start()
        s.store.fenced[s.store.volume("vol").group] = "group 0 is the secondary of pair p"
        h = handle(s.uri("vol"))
        assert h.is_read_only() and not h.can_trim()
        h.shutdown()
        spec = s.catalog.get("vol")
        assert "secondary" in s.catalog.resolve(spec).why_read_only


def test_volume_with_an_nbd_client_is_not_deleted(tmp_path) -> None:
    from vstor.control.service import PoolService
    from vstor.errors import Busy

    with served(tmp_path) as s:
        s.export("vol")
        service = PoolService(s.store)
        service.nbd = s.start()
        h = handle(s.uri("vol"))
        until(lambda: s.server.describe()["clients"] == 1)
        with pytest.raises(Busy, match="NBD client"):
            service.dispatch("volume.delete", {"name": "vol"})
        assert service.dispatch("volume.exports", {})["exports"][0]["clients"] == 1
        h.shutdown()
        until(lambda: not service.nbd_clients_of(s.store.volume("vol").id))
        service.dispatch("volume.unexport", {"name": "vol"})
        assert service.dispatch("volume.delete", {"name": "vol"})["deleted"]


@pytest.mark.skipif(not shutil.which("nbdcopy"), reason="needs nbdcopy (libnbd-bin)")
def test_nbdcopy_round_trip_over_four_connections(tmp_path) -> None:
    src, back = tmp_path / "src.raw", tmp_path / "back.raw"
    with open(src, "wb") as f:
        f.seek(3 * MiB)
        f.write(os.urandom(2 * MiB + 5))
        f.truncate(16 * MiB)
    with served(tmp_path, volumes={"vol": 16 * MiB}) as s:
        s.export("vol")
        s.start()
        uri = s.uri("vol")
        subprocess.run(["nbdcopy", "--connections=4", "--flush", str(src), uri], check=True)
        subprocess.run(["nbdcopy", "--connections=4", uri, str(back)], check=True)
        assert back.read_bytes() == src.read_bytes()
        assert s.store.volume_usage(s.store.volume("vol").id) < 3 * MiB  # only the data was written
        out = subprocess.run(["nbdinfo", "--map", uri], check=True, capture_output=True, text=True).stdout
        kinds = [line.split()[2] for line in out.splitlines()]
        assert kinds[0] == "3" and "0" in kinds  # hole,zero then data, as the chunk map holds
