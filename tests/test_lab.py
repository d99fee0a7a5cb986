"""The DR lab (vm/lab.py): two namespaces and a link that tests can cut and heal."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pyroute2 import netns  # noqa: E402

from vm.lab import Lab, pids_in  # noqa: E402

SERVER = ("import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
          "s.bind((sys.argv[1], 7451)); s.listen(); print('ready', flush=True); "
          "[(c.sendall(b'pong'), c.close()) for c in iter(lambda: s.accept()[0], None)]")
CLIENT = ("import socket,sys; s=socket.create_connection((sys.argv[1], 7451), timeout=2); "
          "print(s.recv(4).decode())")


def _connect(lb: Lab) -> subprocess.CompletedProcess:
    return subprocess.run(lb.command("a", [sys.executable, "-c", CLIENT, lb.address("b")]),
                          capture_output=True, text=True, timeout=30)


@pytest.mark.root
def test_lab_link_cut_heal_and_cleanup():
    lb = Lab(f"t{uuid.uuid4().hex[:6]}", rate="100mbit")
    try:
        lb.up()
        server = subprocess.Popen(lb.command("b", [sys.executable, "-c", SERVER, lb.address("b")]),
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        assert _connect(lb).stdout.strip() == "pong"
        st = lb.status()
        assert st["sites"]["a"]["qdiscs"] == ["tbf"] and st["sites"]["a"]["link"] == "up"
        assert server.pid in st["sites"]["b"]["pids"]
        # The host cannot reach the lab: the link has no end in the host's namespace.
        host = subprocess.run([sys.executable, "-c", CLIENT, lb.address("b")], capture_output=True, text=True,
                              timeout=30)
        assert host.returncode != 0
        lb.cut()
        assert _connect(lb).returncode != 0
        lb.heal()
        assert _connect(lb).stdout.strip() == "pong"
        with pytest.raises(RuntimeError, match="already exists"):
            Lab(lb.tag).up()
    finally:
        lb.down()
    assert lb.ns("a") not in netns.listnetns() and lb.ns("b") not in netns.listnetns()
    assert server.wait(timeout=10) is not None  # down() ended the server left in site B
    assert not pids_in(lb.ns("b"))


@pytest.mark.root
def test_lab_up_with_arrays_and_down_stops_them(tmp_path):
    from vm.lab import main

    tag = f"t{uuid.uuid4().hex[:6]}"
    lb = Lab(tag)
    try:
        assert main(["up", "--tag", tag, "--arrays", str(tmp_path)]) == 0
        for site in ("a", "b"):
            assert len(pids_in(lb.ns(site))) == 1  # the array's daemon runs in its site
            with open("/proc/mounts") as f:
                assert str(tmp_path / f"site-{site}" / "mnt") in f.read()
    finally:
        lb.down()
    with open("/proc/mounts") as f:
        assert str(tmp_path) not in f.read(), "down must stop the arrays and their FUSE mounts"
    assert lb.ns("a") not in netns.listnetns()
