"""The restore drill part of ``backup report``: per policy figures, trends over time and a
restore-time forecast.

``drill_report`` is pure: the same drills, sizes and ``now`` give the same dict (JSON types only).
Figures, over *finished* drills (passed or failed; a running drill is not counted):

* ``drills``, ``passed``, ``failed``, ``pass_rate`` = passed / drills (None when none);
* ``last`` {id, status, time, reason} (time = end, else start);
* ``restore_avg_s``, ``restore_p95_s`` (nearest rank, as the job report) and ``check_avg_s``
  over passed drills (a failed drill's restore may not have finished);
* ``restore_trend_s_per_day``: the slope of an ordinary least-squares line of restore time
  against start time (statistics.linear_regression) over passed drills; None with fewer than
  two distinct start times;
* per UTC day (``daily``, the ``days`` days ending today) and per ISO week (``weekly``, Monday
  first, the weeks those days touch): drills, failed, ``failure_rate`` and ``restore_avg_s``.

Forecast (``forecast`` per policy, for a full restore at the policy's current size: the bytes of
its latest restorable chain): an ordinary least-squares fit over its passed drills of
``restore_s = a + b * GB + c * days`` (GB = 10^9 bytes restored, days since its first drill);
with fewer than four drills, or sizes and dates that move together (a singular system), the fit drops
the date (``a + b * GB``), and with one size only it scales the mean throughput (seconds per
byte). ``method`` says which ("bytes+date", "bytes", "throughput"), ``points`` how many drills.
"""

from __future__ import annotations

import math
import statistics
from datetime import UTC, date, datetime, timedelta

from vstor.backup.rules.report import p95
from vstor.errors import UsageError

__all__ = ["drill_report", "fit_forecast", "render_drills"]

GB = 1e9
DAY = 86400.0


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _day(t: float) -> date:
    return datetime.fromtimestamp(t, tz=UTC).date()


def _when(d: dict) -> float:
    return d.get("ended") or d["started"]


def _trend(passed: list[dict]) -> float | None:
    xs = [d["started"] / DAY for d in passed]
    if len(set(xs)) < 2:
        return None
    return statistics.linear_regression(xs, [float(d["restore_s"]) for d in passed]).slope


def _scope(ds: list[dict]) -> dict:
    done = [d for d in ds if d["status"] in ("passed", "failed")]
    passed = [d for d in done if d["status"] == "passed" and d.get("restore_s") is not None]
    times = [float(d["restore_s"]) for d in passed]
    last = max(done, key=_when) if done else None
    n_pass = sum(d["status"] == "passed" for d in done)
    return {
        "drills": len(done), "passed": n_pass, "failed": len(done) - n_pass,
        "pass_rate": n_pass / len(done) if done else None,
        "last": None if last is None else {"id": last["id"], "status": last["status"], "time": _when(last),
                                           "reason": last.get("reason") or ""},
        "restore_avg_s": _mean(times), "restore_p95_s": p95(times),
        "check_avg_s": _mean([float(d["check_s"]) for d in passed if d.get("check_s") is not None]),
        "restore_trend_s_per_day": _trend(passed),
    }


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None for a (near) singular system."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    scale = max((abs(x) for row in a for x in row), default=0.0) or 1.0
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[piv][col]) < 1e-9 * scale:
            return None
        m[col], m[piv] = m[piv], m[col]
        for r in range(n):
            if r != col:
                f = m[r][col] / m[col][col]
                m[r] = [x - f * y for x, y in zip(m[r], m[col], strict=True)]
    return [m[i][n] / m[i][i] for i in range(n)]


def _lsq(rows: list[list[float]], y: list[float]) -> list[float] | None:
    k = len(rows[0])
    ata = [[sum(r[i] * r[j] for r in rows) for j in range(k)] for i in range(k)]
    aty = [sum(r[i] * v for r, v in zip(rows, y, strict=True)) for i in range(k)]
    return _solve(ata, aty)


def fit_forecast(passed: list[dict], size: int | None, now: float) -> dict | None:
    """The forecast restore time of ``size`` bytes at ``now`` (see the module docstring)."""
    pts = [d for d in passed if d.get("restore_s") is not None and (d.get("bytes") or 0) > 0]
    if not pts or not size:
        return None
    t0 = min(d["started"] for d in pts)
    y = [float(d["restore_s"]) for d in pts]
    gb = [d["bytes"] / GB for d in pts]
    days = [(d["started"] - t0) / DAY for d in pts]
    x_gb, x_day = size / GB, (now - t0) / DAY
    seconds = method = None
    if len(pts) >= 4:
        c = _lsq([[1.0, g, t] for g, t in zip(gb, days, strict=True)], y)
        if c is not None:
            seconds, method = c[0] + c[1] * x_gb + c[2] * x_day, "bytes+date"
    if seconds is None and len(set(gb)) >= 2:
        c = _lsq([[1.0, g] for g in gb], y)
        if c is not None:
            seconds, method = c[0] + c[1] * x_gb, "bytes"
    if seconds is None:
        seconds, method = sum(y) / sum(d["bytes"] for d in pts) * size, "throughput"
    return {"seconds": max(0.0, seconds), "bytes": size, "method": method, "points": len(pts)}


def drill_report(drills: list[dict], sizes: dict[str, int], now: float, days: int = 30) -> dict:
    if days < 1:
        raise UsageError(f"invalid report window {days}: give at least 1 day")
    today = _day(now)
    window = [today - timedelta(days=days - 1 - i) for i in range(days)]
    weeks = sorted({d - timedelta(days=d.weekday()) for d in window})
    names = sorted({d["policy"] for d in drills})
    policies = {}
    for n in names:
        mine = [d for d in drills if d["policy"] == n]
        passed = [d for d in mine if d["status"] == "passed"]
        policies[n] = _scope(mine) | {"size": sizes.get(n), "forecast": fit_forecast(passed, sizes.get(n), now)}

    def series(start: date, span: int) -> dict:
        ds = [d for d in drills if start <= _day(d["started"]) < start + timedelta(days=span)]
        s = _scope(ds)
        return {"drills": s["drills"], "failed": s["failed"],
                "failure_rate": s["failed"] / s["drills"] if s["drills"] else None,
                "restore_avg_s": s["restore_avg_s"]}

    return {"generated": now, "days": days, "overall": _scope(drills), "policies": policies,
            "daily": [{"day": d.isoformat(), **series(d, 1)} for d in window],
            "weekly": [{"week": w.isoformat(), **series(w, 7)} for w in weeks]}


# -- text ------------------------------------------------------------------------------------------
def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}s"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _duration(s: float) -> str:
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            .rstrip() for r in rows]


def render_drills(rep: dict) -> str:
    """The drill section of the text report (empty when no drill ever ran)."""
    if not rep["policies"]:
        return ""
    stamp = lambda t: datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%MZ")  # noqa: E731
    rows = [["policy", "drills", "pass rate", "restore avg", "restore p95", "check avg", "trend/day", "last"]]
    for name, s in rep["policies"].items():
        last = s["last"]
        trend = s["restore_trend_s_per_day"]
        rows.append([name, str(s["drills"]), _pct(s["pass_rate"]), _s(s["restore_avg_s"]), _s(s["restore_p95_s"]),
                     _s(s["check_avg_s"]), "-" if trend is None else f"{trend:+.2f}s",
                     "-" if last is None else f"{last['id']} {last['status']} {stamp(last['time'])}"])
    lines = ["", "Restore drills", *_table(rows)]
    weeks = [w for w in rep["weekly"] if w["drills"]]
    if weeks:
        lines += ["", "Drills per week (UTC, weeks start on Monday)"]
        lines += _table([["week", "drills", "failed", "failure rate", "restore avg"]]
                        + [[w["week"], str(w["drills"]), str(w["failed"]), _pct(w["failure_rate"]),
                            _s(w["restore_avg_s"])] for w in weeks])
    for name, s in rep["policies"].items():
        f = s["forecast"]
        if f:
            lines.append(f"Forecast: a full restore of {name} would take ~{_duration(f['seconds'])} at its current "
                         f"size ({f['bytes'] / GB:.2f} GB; {f['method']} fit over {f['points']} drills)")
    return "\n".join(lines) + "\n"


def plot_drills(rep: dict, path: str) -> None:
    """Restore time of every drill-day (avg) and failures per day, as a PNG at ``path``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'vstor[plot]'") from None
    daily = rep["daily"]
    days = [datetime.strptime(d["day"], "%Y-%m-%d") for d in daily]
    fig = Figure(figsize=(10, 6), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(days, [math.nan if d["restore_avg_s"] is None else d["restore_avg_s"] for d in daily], marker="o",
             label="drill restore time (avg)")
    top.set_ylabel("seconds")
    top.set_ylim(bottom=0)
    top.legend(loc="upper left")
    top.set_title(f"vstor restore drills, last {rep['days']} days (UTC)")
    bottom.bar(days, [d["failed"] for d in daily], color="tab:red", label="failed drills")
    bottom.bar(days, [d["drills"] - d["failed"] for d in daily], bottom=[d["failed"] for d in daily],
               color="tab:green", label="passed drills")
    bottom.set_ylabel("drills")
    bottom.legend(loc="upper left")
    try:
        fig.savefig(path, format="png")
    except OSError as e:
        raise UsageError(f"cannot write the plot to {path}: {e.strerror or e}") from None
