"""The DR drill's lag plot (tools/lagplot.py) writes a real PNG with matplotlib."""

from __future__ import annotations

import os
import struct
import sys

import pytest

from tools import lagplot

pytest.importorskip("matplotlib")


def test_lag_plot_writes_a_png(tmp_path) -> None:
    path = str(tmp_path / "lag.png")
    samples = {"g1": [(t * 0.5, 0.1 + (t % 7) * 0.05) for t in range(40)] + [(30.0, 0.2), (30.5, 0.1)],
               "g2": [(t * 0.5, 0.02) for t in range(60)]}
    lagplot.lag_plot(path, samples, markers=[(0.0, "1"), (10.0, "2"), (30.0, "3")], gap=2.0)
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (900, 420) and len(data) > 10_000


def test_gaps_break_the_line() -> None:
    xs, ys = lagplot._with_gaps([(0.0, 1.0), (0.5, 1.0), (5.0, 2.0)], gap=2.0)
    assert xs[:2] == [0.0, 0.5] and xs[3:] == [5.0] and xs[2] != xs[2]  # NaN between


def test_without_matplotlib_it_says_what_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import fails
    with pytest.raises(lagplot.MissingMatplotlib, match=r"--plot needs matplotlib: pip install 'vstor\[plot\]'"):
        lagplot.lag_plot(str(tmp_path / "x.png"), {})
    assert not os.path.exists(tmp_path / "x.png")
