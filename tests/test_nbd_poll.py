"""Polling for a client's next request (vstor/nbd/poll.py): the bounds, on an injected clock
and a real socket pair, and through the server with libnbd."""

from __future__ import annotations

import socket
import threading

import pytest
from nbdkit import handle, nbd, served

from vstor.nbd.poll import MISSES, REST, PollToken, RequestPoller
from vstor.nbd.wire import Wire


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
