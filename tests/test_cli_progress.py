"""Long operations show a progress bar on a terminal (tqdm; nothing when stderr is not one) and
are waited for as long as the daemon reports progress, even past the default limit (issue #27).
In-process: a control server on a Store, like test_admin_wait.py."""

from __future__ import annotations

import io
import os
import pty
import select
import time
from collections.abc import Iterator

import pytest
from poolkit import make_pool

from vstor.cli import common
from vstor.cli.common import ProgressBar
from vstor.cli.main import main
from vstor.control import protocol, server
from vstor.control.server import ControlServer
from vstor.control.service import PoolService
from vstor.errors import TimedOut
from vstor.store.store import Store
from vstor.store.superblock import layout


def test_the_bar_advances_on_a_terminal() -> None:
    out = io.StringIO()
    with ProgressBar("volume.delete", file=out, tty=True) as bar:
        bar.step(0, 0)  # keep-alive only: no total yet
        bar.step(25, 100)
        first = out.getvalue()
        bar.step(75, 100)
        bar.note("almost")
    text = out.getvalue()
    assert "volume.delete" in first and "25%" in first and "75%" not in first
    assert "75%" in text[len(first):] and "almost" in text
    assert text.endswith("\n")  # the bar's line is ended when the operation is


def test_the_bar_is_drawn_on_a_terminal_that_reports_no_size() -> None:
    """A fresh pty (as under script(1)) says 0x0: tqdm alone would draw nothing there."""
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as tty, ProgressBar("media.load", file=tty) as bar:
        assert os.get_terminal_size(slave).columns == 0
        bar.step(42, 100)
        tty.flush()
        seen = ""
        while "media.load:  42%|" not in seen and select.select([master], [], [], 2)[0]:
            seen += os.read(master, 4096).decode()  # the bar may arrive in more than one write
        assert "media.load:  42%|" in seen, seen
    os.close(master)


def test_no_bar_when_not_a_terminal() -> None:
    out = io.StringIO()  # isatty() is False
    with ProgressBar("volume.delete", file=out) as bar:
        bar.step(50, 100)
        bar.note("x")
    assert out.getvalue() == ""
    with ProgressBar("", file=out, tty=True) as bar:  # no progress asked for
        bar.step(50, 100)
    assert out.getvalue() == ""


@pytest.fixture
def served(tmp_path, monkeypatch) -> Iterator[str]:
    pool = make_pool(tmp_path)
    store = Store.open(pool)
    monkeypatch.setattr(server, "KEEPALIVE", 0.05)
    service = PoolService(store)
    srv = ControlServer(layout(pool)["socket"], service)
    srv.start()
    monkeypatch.setattr(common, "daemon_running", lambda pool: True)
    try:
        yield pool
    finally:
        srv.stop()
        service.close()
        store.close()


def test_a_slow_media_load_completes_past_the_default_limit(served, monkeypatch, capsys):
    pool = served
    monkeypatch.setattr(common, "DEFAULT_TIMEOUT", 0.5)  # the load takes 2 s
    assert main(["library", "create", "lib", "--type", "tape", "--slots", "4", "--drives", "1",
                 "--timing", "load=2,unload=0.2", "--pool", pool]) == 0
    assert main(["media", "create", "lib", "VT0001L9", "VT0002L9", "--pool", pool]) == 0
    # Without progress lines the same wait would end at the limit (the load still completes).
    with pytest.raises(TimedOut):
        protocol.call(layout(pool)["socket"], "media.load", timeout=0.5, library="lib", barcode="VT0002L9",
                      drive=0)
    _wait_loaded(pool, "VT0002L9")
    assert main(["media", "unload", "lib", "--drive", "0", "--pool", pool]) == 0
    capsys.readouterr()
    t0 = time.monotonic()
    assert main(["media", "load", "lib", "VT0001L9", "--drive", "0", "--pool", pool]) == 0
    assert time.monotonic() - t0 >= 2.0
    out = capsys.readouterr()
    assert "loaded VT0001L9" in out.out and out.err == ""  # stderr is no terminal: no bar


def _wait_loaded(pool: str, barcode: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        inv = protocol.call(layout(pool)["socket"], "media.inventory", library="lib")
        if any(r["element"].startswith("drive") and r["barcode"] == barcode for r in inv):
            return
        assert time.monotonic() < deadline, f"{barcode} was not loaded"
        time.sleep(0.05)
