"""The control server stops at once after a request: every daemon stop waits for it.

socketserver's serve_forever looks for a shutdown request every poll interval; with its default
(0.5 s) each stop, which comes right after the 'array stop' request woke the loop, waited
~0.5 s (every test array pays a stop)."""

from __future__ import annotations

import time

from vstor.control.protocol import call
from vstor.control.server import ControlServer


class _Echo:
    """A PoolService stand-in: answers every request with its name."""

    def dispatch(self, op: str, args: dict, progress: object = None) -> dict:
        return {"op": op}


def test_stop_right_after_a_request_is_quick(tmp_path):
    times = []
    for i in range(3):  # the quickest of three: a loaded machine may delay one
        server = ControlServer(str(tmp_path / f"s{i}.sock"), _Echo())  # type: ignore[arg-type]
        server.start()
        try:
            assert call(server.path, "ping") == {"op": "ping"}  # wakes the serve loop, as 'array stop' does
        finally:
            t0 = time.monotonic()
            server.stop()
            times.append(time.monotonic() - t0)
    assert min(times) < 0.25, f"ControlServer.stop took {times} s after a request (the poll interval?)"
