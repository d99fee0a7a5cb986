"""vstor commands run in process from two threads at once keep sys.stdout intact.

replkit tears both sites down at once (threads), and each clean-up runs ``array stop`` in process
(harness._vstor_in_process). With contextlib.redirect_stdout, the process-wide swap, the two
threads could restore each other's buffer: a StringIO stayed as sys.stdout, so every later line of
``python -m tools.bench_replication`` (its results) vanished, one "array stopped" line leaked, and
the tool exited 0. These tests force that interleaving with events, without a daemon or namespace,
and check the tools' last line of defence (tools.benchlib.stdoutguard).
"""

from __future__ import annotations

import io
import sys
import threading

import harness
import pytest

from tools.benchlib.stdoutguard import stdout_checked

WAIT = 10.0


def _command(first_done: threading.Event, second_in: threading.Event):  # noqa: ANN202
    """A vstor main whose two runs interleave as the two sites' stops did: the first starts, the
    second starts, the first ends, then the second prints its line and ends."""

    def main(args: list[str]) -> int:
        if args[0] == "first":
            assert second_in.wait(WAIT)
            print("first done")
        else:
            second_in.set()
            assert first_done.wait(WAIT)
            print("array stopped (pid 1)")
        return 0

    return main


def test_two_threads_in_process_leave_stdout_as_it_was(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    first_done, second_in = threading.Event(), threading.Event()
    monkeypatch.setattr("vstor.cli.main.main", _command(first_done, second_in))
    before, errors = sys.stdout, []

    def run(name: str) -> None:
        try:
            harness._vstor_in_process([name])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            if name == "first":
                first_done.set()

    first = threading.Thread(target=run, args=("first",))
    first.start()
    second = threading.Thread(target=run, args=("second",))
    second.start()
    first.join(WAIT)
    second.join(WAIT)
    stdout_now = sys.stdout
    sys.stdout = before  # so that a failure below still reports through pytest
    assert not errors, errors
    assert stdout_now is before, f"sys.stdout left as {stdout_now!r}: later output would be lost"
    print("the results")
    out = capsys.readouterr().out
    assert out == "the results\n", f"a thread's captured line leaked, or ours was lost: {out!r}"


def test_other_threads_write_through_while_one_captures(capsys: pytest.CaptureFixture[str]) -> None:
    mine, err = io.StringIO(), io.StringIO()
    with harness.captured(mine, err):
        print("captured")
        t = threading.Thread(target=print, args=("from another thread",))
        t.start()
        t.join()
    assert mine.getvalue() == "captured\n"
    assert capsys.readouterr().out == "from another thread\n"


def test_a_tool_whose_stdout_was_swapped_fails_and_shows_what_was_caught(
        capsys: pytest.CaptureFixture[str]) -> None:
    @stdout_checked
    def tool() -> int:
        print("setup")
        sys.stdout = io.StringIO()  # what a redirect left in place did
        print("the results")
        return 0

    assert tool() == 1
    captured = capsys.readouterr()
    assert captured.out == "setup\nthe results\n"
    assert "sys.stdout was replaced" in captured.err
    assert stdout_checked(lambda: 3)() == 3  # untouched stdout: main's own code
