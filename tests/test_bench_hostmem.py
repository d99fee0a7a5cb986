"""The benchmarks' hold on free page reporting (tools/benchlib/hostmem.py), on a stand-in file.

The real parameter lives in /sys and the real warm-up touches all free memory, so the test
points ``steady_memory`` at a temporary file and counts the warm-ups instead.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tools.benchlib.hostmem import steady_memory


class Warmups:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> tuple[int, float]:
        self.count += 1
        return 3 << 30, 1.5


def hold(param: Path, touch: Warmups, enabled: bool = True) -> AbstractContextManager[str]:
    return steady_memory(enabled, param=param, top_order=lambda: 10, touch=touch)


def test_hold_raises_the_order_and_restores_it(tmp_path: Path) -> None:
    param, touch = tmp_path / "order", Warmups()
    param.write_text("9\n")
    with hold(param, touch) as header:
        assert param.read_text() == "11\n"
        assert "9 -> 11" in header and "3 GiB" in header and "echo 9 >" in header
    assert param.read_text() == "9\n" and touch.count == 1


def test_restored_when_the_run_fails(tmp_path: Path) -> None:
    param, touch = tmp_path / "order", Warmups()
    param.write_text("9\n")
    with pytest.raises(OSError, match="the run's own error"), hold(param, touch):
        raise OSError("the run's own error")  # also an OSError: must not be taken for ours
    assert param.read_text() == "9\n"


def test_nested_hold_leaves_it_to_the_outer_one(tmp_path: Path) -> None:
    param, touch = tmp_path / "order", Warmups()
    param.write_text("9\n")
    with hold(param, touch):
        with hold(param, touch) as inner:
            assert "held off already" in inner
        assert param.read_text() == "11\n"  # the inner exit did not restore it early
    assert param.read_text() == "9\n" and touch.count == 1


def test_missing_parameter_and_opt_out_change_nothing(tmp_path: Path) -> None:
    touch = Warmups()
    with hold(tmp_path / "absent", touch) as header:
        assert header.startswith("free page reporting: not held off (") and "absent" in header
    param = tmp_path / "order"
    param.write_text("9\n")
    with hold(param, touch, enabled=False) as header:
        assert "--keep-page-reporting" in header and param.read_text() == "9\n"
    assert touch.count == 0 and not (tmp_path / "absent").exists()
