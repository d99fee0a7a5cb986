"""NBD through the real daemon and CLI: array start --nbd, volume export | unexport | exports,
the local-attach rule, exports persisting across a restart, and array stop with a client
connected (its flushed writes are durable)."""

from __future__ import annotations

import json
import socket

import pytest
from nbdkit import handle, nbd

pytestmark = [pytest.mark.root, pytest.mark.skipif(nbd is None, reason="needs python3-libnbd (make setup)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_exports_through_the_daemon(array_factory) -> None:
    arr = array_factory()
    arr.create("data", "64M")
    arr.create("local", "16M")
    r = arr.vstor("volume", "export", "data")  # offline: persisted for the next start
    assert "not running" in r.stdout
    port = free_port()
    for args, text in ((["--nbd-poll-us", "40"], "--nbd-poll-us needs --nbd ADDR:PORT"),
                       (["--nbd", f"127.0.0.1:{port}", "--nbd-poll-us", "5000"],
                        "--nbd-poll-us must be 0 to 1000 microseconds, not 5000")):
        bad = arr.start(args=args, check=False)
        assert bad.returncode == 2 and bad.stderr.strip() == f"vstor: error: {text}", bad.stderr
    arr.start(args=["--nbd", f"127.0.0.1:{port}"])
    uri = f"nbd://127.0.0.1:{port}/data"
    for args, code, text in ((["nope"], 3, "nope"), (["data"], 4, "already exported")):
        bad = arr.vstor("volume", "export", *args, check=False)
        assert bad.returncode == code and bad.stderr.startswith("vstor: error:") and text in bad.stderr, bad.stderr
    h = handle(uri)
    h.pwrite(b"kept" * 1024, 0)
    h.flush()  # durable: fsync's contract
    h.pwrite(b"also" * 1024, 4096, nbd.CMD_FLAG_FUA)
    ex = arr.vstor_json("volume", "exports")
    assert (ex["server"]["clients"], ex["server"]["poll_us"]) == (1, 40)
    (e,) = ex["exports"]
    assert (e["name"], e["clients"], e["bytes_written"], e["effective_read_only"]) == ("data", 1, 8192, False)
    assert "nbd" in arr.vstor("array", "status").stdout
    # a volume attached on the host cannot be exported writable, unless --shared
    arr.attach("local")
    bad = arr.vstor("volume", "export", "local", check=False)
    assert bad.returncode == 5 and "open on the array host" in bad.stderr and "--shared" in bad.stderr
    arr.vstor("volume", "export", "local", "--read-only")
    ro = handle(f"nbd://127.0.0.1:{port}/local")
    assert ro.is_read_only()
    ro.shutdown()
    arr.vstor("volume", "detach", "local")
    arr.vstor("volume", "unexport", "local")
    with pytest.raises(nbd.Error, match="no export named 'local'"):
        handle(f"nbd://127.0.0.1:{port}/local")
    arr.stop()  # with the client still connected: it is told ESHUTDOWN, then cut off
    with pytest.raises(nbd.Error):
        h.pread(4096, 0)
    del h
    arr.start(args=["--nbd", f"127.0.0.1:{port}", "--nbd-poll-us", "0"])  # the export is still there, with the data
    h = handle(uri)
    assert h.pread(8192, 0) == b"kept" * 1024 + b"also" * 1024
    h.shutdown()
    listed = json.loads(arr.vstor("volume", "exports", "--json").stdout)
    assert [x["name"] for x in listed["exports"]] == ["data"]
    assert (listed["server"]["poll_us"], listed["server"]["polls_caught"]) == (0, 0)  # polling turned off
