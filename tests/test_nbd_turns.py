"""Serving turns (vstor/nbd/serving/turns.py): one connection of a server serves from memory at
a time, and none holds the turn while it waits, so a client that stops reading its replies
cannot stall the others; several busy connections still get every reply right."""

from __future__ import annotations

import os
import random
import socket
import threading

import pytest
from nbdkit import MiB, Raw, handle, nbd, served

from vstor.nbd import proto as P
from vstor.nbd.serving.turns import ServingTurn

needs_libnbd = pytest.mark.skipif(nbd is None, reason="needs python3-libnbd (apt-get install python3-libnbd)")


def in_thread(fn, *args) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def test_a_turn_is_held_by_one_thread_and_left_only_by_it() -> None:
    turn = ServingTurn()
    turn.take()
    turn.take()  # again: a no-op for the holder
    assert turn.held() and turn.turns == 1
    other_took = threading.Event()
    seen: list[bool] = []

    def other() -> None:
        turn.leave()  # not the holder's: a no-op
        seen.append(turn.held())
        turn.take()
        other_took.set()
        turn.leave()

    t = in_thread(other)
    assert not other_took.wait(0.2)  # waits while this thread holds the turn
    assert turn.held() and seen == [False]
    turn.leave()
    assert other_took.wait(5)
    t.join(5)
    assert not turn.held() and turn.turns == 2


def test_yield_keeps_the_turn_unless_another_waits_then_lets_it_go_first() -> None:
    turn = ServingTurn()
    turn.take()
    turn.yield_turn()  # nobody waits: kept, no new turn
    assert turn.held() and turn.turns == 1
    order: list[str] = []
    waiting = threading.Event()

    def other() -> None:
        waiting.set()
        turn.take()
        order.append("other")
        turn.leave()

    t = in_thread(other)
    assert waiting.wait(5)
    while not turn.waiting():  # until the other thread is in take()
        threading.Event().wait(0.001)
    turn.yield_turn(wait=5.0)
    order.append("yielder")
    assert turn.held() and order == ["other", "yielder"] and turn.turns == 3
    turn.leave()
    t.join(5)


@needs_libnbd
def test_a_client_that_stops_reading_replies_does_not_stall_another_connection(tmp_path) -> None:
    """Client A queues 128 MiB of reads and reads none of the replies, so its connection's
    thread blocks sending: it must have left its turn first, or client B would wait forever."""
    with served(tmp_path, volumes={"vol": 64 * MiB, "other": 8 * MiB}) as s:
        s.export("vol")
        s.export("other")
        s.start()
        other = s.store.volume("other").id
        s.store.write(other, 0, b"B" * 4096)
        a = Raw(s.port, rcvbuf=4096)
        try:
            a.go("vol")
            a.s.sendall(b"".join(P.request(P.CMD_READ, i, (i % 1024) * 65536, 65536) for i in range(2048)))
            got: list[bytes] = []
            b = in_thread(lambda: got.append(handle(s.uri("other")).pread(4096, 0)))
            b.join(20)
            assert got == [b"B" * 4096], "a connection waited behind a client that reads no replies"
            assert s.server.export_stats()["vol"]["ops"] > 0
        finally:
            a.close()  # A's thread fails its send and leaves


@needs_libnbd
def test_busy_connections_in_turns_each_get_their_own_data(tmp_path) -> None:
    """Four connections at once, reads and writes of their own regions: every read returns
    what that connection wrote (the turns change who serves when, never what)."""
    with served(tmp_path, volumes={"vol": 16 * MiB}) as s:
        s.export("vol")
        s.start()
        errors: list[str] = []

        def client(k: int) -> None:
            h = handle(s.uri("vol"))
            rng = random.Random(k)
            base = k * 4 * MiB
            mine = {}
            try:
                for i in range(300):
                    off = base + rng.randrange(0, 4 * MiB // 4096) * 4096
                    if i % 3 == 0 or off not in mine:
                        data = os.urandom(4096)
                        h.pwrite(data, off)
                        mine[off] = data
                    elif h.pread(4096, off) != mine[off]:
                        errors.append(f"client {k}: wrong data at {off}")
                queued = [(off, nbd.Buffer(4096)) for off in list(mine)[:64]]  # pipelined: served in batches
                cookies = [h.aio_pread(buf, off) for off, buf in queued]
                while h.aio_in_flight():
                    h.poll(-1)
                for (off, buf), c in zip(queued, cookies, strict=True):
                    if h.aio_command_completed(c) is not True or buf.to_bytearray() != mine[off]:
                        errors.append(f"client {k}: pipelined read at {off} wrong")
                h.shutdown()
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(f"client {k}: {e}")

        threads = [in_thread(client, k) for k in range(4)]
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads) and not errors, errors
        assert s.server.turn.turns > 4


def test_a_full_socket_makes_the_turn_holder_leave_before_it_waits() -> None:
    """Wire.send in the turn sends without waiting; when the socket is full it leaves the turn
    and then waits, so another thread can take the turn meanwhile."""
    from vstor.nbd.serving.wire import Wire

    left, right = socket.socketpair()
    try:
        left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        w = Wire(left)
        w.turn = turn = ServingTurn()
        took, sent, other = threading.Event(), threading.Event(), threading.Event()

        def sender() -> None:
            turn.take()
            took.set()
            w.send(b"x" * (4 * MiB))  # the peer reads nothing yet: the socket fills
            sent.set()
            turn.leave()

        t = in_thread(sender)
        assert took.wait(5)
        in_thread(lambda: (turn.take(), other.set(), turn.leave())).join(5)
        assert other.is_set(), "the sender kept its turn while it waited for the socket"
        assert not sent.is_set()
        got = 0
        while got < 4 * MiB:
            got += len(right.recv(1 << 20))
        assert sent.wait(5)
        t.join(5)
    finally:
        left.close()
        right.close()
