"""Polling for a client's next request (vstor/nbd/serving/poll.py): the bounds, on an injected clock
and a real socket pair, and through the server with libnbd."""

from __future__ import annotations

import socket
import threading

import pytest
from nbdkit import Raw, handle, nbd, served

from vstor.nbd import proto as P
from vstor.nbd.serving.poll import MISSES, REST, PollToken, RequestPoller
from vstor.nbd.serving.wire import Wire


class Steps:
    """A clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_budget_idle_and_token_decide_whether_to_poll() -> None:
    token = PollToken()
    busy = [False]
    assert RequestPoller(0.0, token, lambda: True).begin() is None  # polling off
    p = RequestPoller(40e-6, token, lambda: not busy[0], clock=lambda: 10.0)
    assert p.begin() == pytest.approx(10.0 + 40e-6)
    q = RequestPoller(40e-6, token, lambda: True, clock=lambda: 10.0)
    assert q.begin() is None  # p holds the token: one connection polls at a time
    p.end(caught=True)
    assert (token.caught, token.missed) == (1, 0)
    busy[0] = True  # a reply still going out (a streamed read, a FLUSH with a worker)
    assert p.begin() is None
    assert q.begin() is not None  # the token came back
    q.end(caught=False)
    assert (token.caught, token.missed) == (1, 1)


def test_a_connection_rests_after_misses_in_a_row_then_tries_again() -> None:
    token = PollToken()
    p = RequestPoller(40e-6, token, lambda: True, clock=lambda: 0.0)
    for _ in range(MISSES - 1):
        assert p.begin() is not None
        p.end(caught=False)
    assert p.begin() is not None
    p.end(caught=True)  # a catch forgives the misses before it
    for _ in range(MISSES):
        assert p.begin() is not None
        p.end(caught=False)
    assert [p.begin() for _ in range(REST)] == [None] * REST  # a client that thinks: sleep at once
    assert p.begin() is not None
    p.end(caught=False)
    assert (token.caught, token.missed) == (1, 2 * MISSES)


def test_wire_polls_then_sleeps_in_recv() -> None:
    a, b = socket.socketpair()
    try:
        token = PollToken()
        w = Wire(a)
        w.poller = RequestPoller(1e-3, token, lambda: True, clock=Steps(1.0))  # every read of the clock: past due
        b.sendall(b"x" * 28)
        w.fill(28)  # already there: the first poll has it
        assert (token.caught, token.missed, w.buffered()) == (1, 0, 28)
        w._rpos = w._rend  # taken
        got = threading.Event()
        t = threading.Thread(target=lambda: (w.fill(28), got.set()))
        t.start()
        for _ in range(2000):  # the poll ends with nothing: then the thread sleeps in recv
            if token.missed:
                break
            got.wait(0.005)
        assert token.missed == 1 and not got.is_set()
        b.sendall(b"y" * 28)
        t.join(10)
        assert got.is_set() and w.buffered() == 28 and token.caught == 1
    finally:
        a.close()
        b.close()


@pytest.mark.skipif(nbd is None, reason="needs python3-libnbd (make setup)")
@pytest.mark.parametrize("poll", [40e-6, 0.0])
def test_server_polls_at_queue_depth_one_unless_turned_off(tmp_path, poll: float) -> None:
    with served(tmp_path, poll=poll) as s:
        s.export("vol")
        s.start()
        h = handle(s.uri("vol"))
        data = bytes(range(256)) * 16
        for i in range(200):
            h.pwrite(data, i * 4096)
            assert h.pread(4096, i * 4096) == data
        h.shutdown()
        d = s.server.describe()
        assert d["poll_us"] == round(poll * 1e6)
        if poll:
            assert d["polls_caught"] + d["polls_missed"] > 0, d
        else:
            assert d["polls_caught"] == d["polls_missed"] == 0, d


def test_a_client_with_requests_in_flight_is_not_polled_for(tmp_path) -> None:
    """Requests that come several to a receive are served in one batch after a sleep; polling
    for them one by one would cost that batching. One at a time, the same client is polled for."""
    with served(tmp_path) as s:
        s.export("vol")
        s.start()
        raw = Raw(s.port)
        raw.go("vol")
        token = s.server._poll_token
        for i in range(50):  # four writes sent together, then their four replies
            raw.s.sendall(b"".join(P.request(P.CMD_WRITE, 4 * i + k, k * 4096, 4096) + bytes(4096) for k in range(4)))
            for _ in range(4):
                magic, err, _ck = P.SIMPLE_REPLY.unpack(raw.recv(16))
                assert (magic, err) == (P.SIMPLE_REPLY_MAGIC, 0)
        assert token.caught + token.missed == 0
        for i in range(50):
            assert raw.simple(P.CMD_WRITE, 1000 + i, 0, 4096, data=bytes(4096))[0] == 0
        assert token.caught + token.missed > 0
        raw.close()
