"""Backup clients through the real daemon and the CLI: pki, register, a policy, a push, the
agent run by 'backup run', the file list, and restores on the array host and to the agent."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from clientkit import free_port, make_tree, snapshot
from harness import VSTOR

pytestmark = pytest.mark.root


def test_client_push_agent_and_restores_through_the_daemon(array_factory, tmp_path):
    arr = array_factory()
    tls = str(tmp_path / "tls")
    arr.vstor("pki", "init", tls)
    for name in ("array", "web1"):
        arr.vstor("pki", "issue", name, "--dir", tls)
    port = free_port()
    arr.start(args=["--backup-listen", f"127.0.0.1:{port}", "--tls-dir", tls, "--name", "array"])
    src = make_tree(str(tmp_path / "srv"), files=50, seed=11)
    arr.vstor("library", "create", "lib", "--type", "tape", "--slots", "4", "--drives", "2")
    arr.vstor("media", "create", "lib", "--range", "VT0001L9-VT0002L9", "--capacity", "256M")
    arr.vstor("client", "register", "web1", "--paths", src, "--quota", "1G")
    arr.vstor("backup", "policy", "create", "web", "--source", "client:web1", "--library", "lib",
              "--media", "VT0001L9-VT0002L9", "--level", "incremental", "--retries", "1", "--retry-delay", "1m")
    r = arr.vstor_json("client", "push", "--array", f"127.0.0.1:{port}", "--name", "web1", "--tls-dir", tls, src)
    assert r["status"] == "done" and r["level"] == "full", r
    files = arr.vstor_json("backup", "files", str(r["job"]), "--glob", "*/big.bin")
    assert [f["path"] for f in files["files"]] == [src + "/big.bin"]
    out = str(tmp_path / "out")
    arr.vstor("backup", "restore", str(r["job"]), "--to", out)
    assert snapshot(out + src) == snapshot(src)

    bad = arr.vstor("client", "push", "--array", f"127.0.0.1:{port}", "--name", "web1", "--tls-dir", tls, "/etc",
                    check=False)
    assert bad.returncode != 0 and bad.stderr.startswith("vstor: error:") and "outside" in bad.stderr, bad.stderr

    agent = subprocess.Popen([VSTOR, "client", "serve", "--array", f"127.0.0.1:{port}", "--name", "web1",
                              "--tls-dir", tls], env=arr.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 60  # wait for the agent to connect (bounds a hang only)
        while not arr.vstor_json("client", "list")[0]["connected"]:
            assert time.monotonic() < end and agent.poll() is None, agent.stderr.read() if agent.poll() else ""
            time.sleep(0.1)
        with open(os.path.join(src, "added"), "w") as f:
            f.write("new since the full")
        job = json.loads(arr.vstor("backup", "run", "web", "--wait", "--json").stdout)
        assert job["status"] == "done" and job["level"] == "incremental", job
        back = str(tmp_path / "back")
        arr.vstor("backup", "restore", str(job["id"]), "--to-client", "web1", "--target", back, "--files", "*/added")
        with open(back + src + "/added") as f:
            assert f.read() == "new since the full"
    finally:
        agent.terminate()
        agent.wait(30)
    arr.stop()
    log = arr.vstor_json("audit", "log")
    assert {"client.register", "backup.policy.create", "client.refused"} <= {e["action"] for e in log}
