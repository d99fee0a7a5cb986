"""Service management (issue #27): the systemd unit, sd_notify, journald logging, install-service,
shell completion and the man pages.

There is no systemd as PID 1 here, so what is tested is what can be for real: the unit that
install-service writes passes ``systemd-analyze verify``; the daemon, started the way the unit
starts it (in the foreground, NOTIFY_SOCKET and INVOCATION_ID set), sends READY=1 with its PID
over a real datagram socket once the volumes are mounted and STOPPING=1 when ``vstor array
stop`` (the unit's ExecStop) stops it, and logs journald lines to stderr; completion runs
argcomplete's own protocol; the man pages render under groff without a warning.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from harness import VSTOR, run

from tools import make_manpages
from vstor.cli import service_cmd
from vstor.cli.main import build_parser
from vstor.cli.main import main as vstor_main
from vstor.control.host import sdnotify


def _datagram_socket(name: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name[1:] if name.startswith("@") else name)
    s.settimeout(5)
    return s


def _fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().split("\n") if line)


# -- sd_notify --------------------------------------------------------------------------------
@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_sends_one_datagram_to_notify_socket(tmp_path, abstract):
    name = f"@vstor-test-{uuid.uuid4().hex}" if abstract else str(tmp_path / "notify")
    with _datagram_socket(name) as s:
        assert sdnotify.notify("READY=1\nSTATUS=serving", {"NOTIFY_SOCKET": name})
        assert _fields(s.recv(4096)) == {"READY": "1", "STATUS": "serving"}


def test_notify_without_a_socket_sends_nothing_and_never_fails(tmp_path):
    assert not sdnotify.notify("READY=1", {})
    assert not sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1"})
    assert not sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})


# -- journald logging selection ---------------------------------------------------------------
def test_under_systemd_needs_journal_stream_to_name_stderr_itself(tmp_path):
    with open(tmp_path / "stream", "w") as f, open(tmp_path / "other", "w") as g:
        st = os.fstat(f.fileno())
        stream = f"{st.st_dev}:{st.st_ino}"
        assert sdnotify.under_systemd({"JOURNAL_STREAM": stream}, fd=f.fileno())
        # a daemon forked by 'array start' inside some service: stderr is log/daemon.out
        assert not sdnotify.under_systemd({"JOURNAL_STREAM": stream, "INVOCATION_ID": "x"}, fd=g.fileno())
    assert sdnotify.under_systemd({"INVOCATION_ID": "0123abcd"})  # a service whose output is not the journal
    assert not sdnotify.under_systemd({})


def test_stderr_handler_journal_lines_have_priority_and_no_time():
    assert sdnotify.stderr_handler(False, {}) is None  # forked by 'array start': the file only
    plain = sdnotify.stderr_handler(True, {})
    assert plain is not None and not isinstance(plain.formatter, sdnotify.JournalFormatter)
    handler = sdnotify.stderr_handler(False, {"INVOCATION_ID": "x"})
    assert handler is not None
    handler.setStream(io.StringIO())
    logger = logging.getLogger("vstor.test-journal")
    logger.addHandler(handler)
    try:
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.info("serving")
        logger.error("journal write failed\nsecond line")
        logger.debug("not shown")
    finally:
        logger.removeHandler(handler)
    assert handler.stream.getvalue().splitlines() == [
        "<6>vstor.test-journal INFO serving",
        "<3>vstor.test-journal ERROR journal write failed | second line",
    ]


@pytest.mark.root
def test_daemon_run_as_the_unit_runs_it_notifies_and_logs_to_the_journal(array_factory):
    """ExecStart (the daemon in the foreground) with NOTIFY_SOCKET and INVOCATION_ID, then
    ExecStop ('vstor array stop'): READY=1 with MAINPID once mounted, STOPPING=1, exit 0,
    journald lines on stderr and the usual lines in log/daemon.log."""
    arr = array_factory("svc")
    name = f"@vstor-test-{uuid.uuid4().hex}"
    env = dict(arr.env, NOTIFY_SOCKET=name, INVOCATION_ID=uuid.uuid4().hex)
    env.pop("JOURNAL_STREAM", None)
    with _datagram_socket(name) as s:
        s.settimeout(120)
        proc = subprocess.Popen([sys.executable, "-m", "vstor.control.daemon", "--pool", arr.pool,
                                 "--mount", arr.mnt, "--foreground"], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            ready = _fields(s.recv(4096))
            assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid), ready
            assert arr.mnt in ready["STATUS"]
            assert os.path.isdir(os.path.join(arr.mnt, "volumes"))  # mounted when READY came
            assert "array stopped" in arr.vstor("array", "stop").stdout
            stopping = _fields(s.recv(4096))
            assert stopping["STOPPING"] == "1", stopping
            assert proc.wait(timeout=120) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err = proc.stderr.read()
        proc.stderr.close()
    ours = [line for line in err.splitlines() if re.search(r"vstor\.\w+ (INFO|WARNING|ERROR) ", line)]
    assert ours and all(re.match(r"<[0-7]>vstor\.\w+ [A-Z]+ ", line) for line in ours), err  # no time
    assert any(line.startswith("<6>vstor.daemon INFO serving pool") for line in ours), err
    with open(os.path.join(arr.pool, "log", "daemon.log")) as f:
        assert re.search(r"^\d{4}-\d\d-\d\d .* vstor.daemon INFO serving pool", f.read(), re.M)


# -- the unit and install-service -------------------------------------------------------------
@pytest.mark.parametrize("path", ["/srv/pool", "/srv//my pool/", "/data/.hidden/a-b_c.d", "/", "/x/ü"])
def test_escape_path_matches_systemd_escape(path):
    if not shutil.which("systemd-escape"):
        pytest.skip("systemd-escape is not installed")
    out = subprocess.run(["systemd-escape", "--path", path], capture_output=True, text=True, check=True).stdout
    assert service_cmd.escape_path(path) == out.strip()


def _install(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    pool = tmp_path / "pool"
    if not pool.exists():
        run([VSTOR, "pool", "init", str(pool)])
    return run([VSTOR, "install-service", str(pool), "--mount", str(tmp_path / "mnt"), *extra])


def test_install_service_writes_a_unit_that_systemd_analyze_verifies(tmp_path):
    root = tmp_path / "root"
    out = _install(tmp_path, "--root", str(root), "--key-file", str(tmp_path / "key")).stdout
    instance = service_cmd.escape_path(str(tmp_path / "pool"))
    unit_dir, conf = root / "etc/systemd/system", root / "etc/vstor" / f"{instance}.conf"
    template = unit_dir / "vstor@.service"
    assert f"wrote {template}" in out and f"wrote {conf}" in out and "not running systemctl" in out
    assert f"systemctl start vstor@{instance}.service" in out
    text = template.read_text()
    assert "@PYTHON@" not in text and f"ExecStart={sys.executable} -m vstor.control.daemon --pool %f" in text
    assert re.search(r"^Type=notify$", text, re.M) and re.search(r"^ExecStop=.* array stop --pool %f", text, re.M)
    assert conf.read_text().splitlines()[1:] == [f"VSTOR_MOUNT={tmp_path / 'mnt'}",
                                                 f"VSTOR_DAEMON_ARGS=--key-file {tmp_path / 'key'}"]
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    # verify an instance of the template, as systemd would load it, and the template itself
    instance_unit = unit_dir / f"vstor@{instance}.service"
    shutil.copy(template, instance_unit)
    for unit in (instance_unit, template):
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                           cwd=unit_dir)
        assert r.returncode == 0 and r.stderr.strip() == "", f"{unit.name}: {r.stderr}"


def test_install_service_dry_run_changes_nothing_and_says_systemd_is_not_running(tmp_path, monkeypatch, capsys):
    run([VSTOR, "pool", "init", str(tmp_path / "pool")])
    monkeypatch.setattr(service_cmd, "systemd_running", lambda: False)
    before = sorted(p for p in Path("/etc/systemd/system").glob("vstor@*"))
    assert vstor_main(["install-service", str(tmp_path / "pool"), "--mount", str(tmp_path / "mnt"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would write /etc/systemd/system/vstor@.service" in out
    assert sum("systemd is not running" in line for line in out.splitlines()) == 1
    assert sorted(Path("/etc/systemd/system").glob("vstor@*")) == before


def test_install_service_refuses_what_is_not_a_pool(tmp_path):
    r = run([VSTOR, "install-service", str(tmp_path), "--mount", str(tmp_path / "m"), "--root", str(tmp_path / "r")],
            check=False)
    assert r.returncode != 0 and r.stderr.startswith("vstor: error:")
    assert not (tmp_path / "r").exists()


# -- shell completion -------------------------------------------------------------------------
def _complete(tmp_path, line: str) -> list[str]:
    """What argcomplete answers for ``line``, run as bash runs it: _ARGCOMPLETE set, the words
    in COMP_LINE, the answer on fd 8 separated by IFS (vertical tab by default)."""
    out = tmp_path / "completions"
    env = dict(os.environ, _ARGCOMPLETE="1", COMP_LINE=line, COMP_POINT=str(len(line)), COMP_TYPE="9")
    cmd = f"exec {sys.executable} -m vstor.cli.main 8>{out} 9>/dev/null"
    subprocess.run(["bash", "-c", cmd], env=env, check=True, timeout=60, cwd=tmp_path)
    return sorted(out.read_text().split("\x0b"))


def test_completion_lists_the_commands_and_subcommands(tmp_path):
    top = [a for a in build_parser()._actions if a.dest == "command"][0]
    words = _complete(tmp_path, "vstor ")
    assert set(top.choices) <= {w.strip() for w in words}, words
    assert "install-service" in top.choices and "completion" in top.choices
    assert [w.strip() for w in _complete(tmp_path, "vstor array st")] == ["start", "status", "stop"]


def test_completion_command_prints_the_bash_script():
    r = run([VSTOR, "completion", "bash"])
    assert "complete " in r.stdout and "vstor" in r.stdout and "_python_argcomplete" in r.stdout


# -- man pages --------------------------------------------------------------------------------
def _render(page: Path) -> str:
    """The page as man shows it (man -l, wide, no pager), or groff's rendering if man is missing."""
    env = dict(os.environ, MANWIDTH="250", MAN_KEEP_FORMATTING="", MANPAGER="cat", PAGER="cat")
    if shutil.which("man"):
        cmd = ["man", "--warnings=w", "-l", str(page)]
    else:
        cmd = ["groff", "-man", "-Tutf8", "-ww", "-rLL=250n", str(page)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    assert r.stderr.strip() == "", f"{page.name}: {r.stderr}"
    return re.sub(r".\x08", "", r.stdout)


def test_man_pages_render_without_warnings_and_name_every_command(tmp_path):
    if not shutil.which("groff"):
        pytest.skip("groff is not installed (make setup installs it)")
    paths = [Path(p) for p in make_manpages.write_pages(str(tmp_path / "man"))]
    for page in paths:
        r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "", f"{page.name}: {r.stderr}"
    rendered = {p.name: " ".join(_render(p).split()) for p in paths}
    for name, help_, parser in make_manpages.commands(build_parser()):
        assert f"{name} {help_}" in rendered["vstor.1"]
        page = rendered[f"vstor-{name}.1"]
        for _, _, sub_parser in make_manpages.commands(parser):
            assert sub_parser.prog in page, f"{sub_parser.prog} is missing from vstor-{name}.1"
        for action in make_manpages.options(parser):
            assert all(o in page for o in action.option_strings), f"{action.option_strings} in vstor-{name}.1"
    assert "vstor array start" in rendered["vstor-array.1"] and "--mount" in rendered["vstor-install-service.1"]
