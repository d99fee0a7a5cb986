"""The backup report: the headline figures users track (reference backup.md §7).

``build_report`` is pure: the same jobs, restores and ``now`` give the same dict, which holds
only str, int, float, None, lists and dicts (so it goes over the control socket as JSON).
Every scope ("overall", each policy, each day) carries the same figures:

* ``completion_rate`` = done / (done + failed). Running and waiting jobs are not finished, and
  expired jobs (pruned by retention, their outcome no longer counted) are left out; None when
  no job finished.
* ``verify_success_rate`` = ok / (ok + failed) over post-job verifies; skipped or absent
  verifies do not count; None when there were none.
* ``restore_avg_s``, ``restore_p95_s`` (nearest rank: the ceil(0.95 n)-th smallest) and
  ``restore_mb_per_s_avg`` (mean of each restore's bytes / seconds, MB = 10^6 B) over
  *successful* restores: a failed restore has no recovery time. None when there are none.
* ``full_bytes_avg`` / ``incremental_bytes_avg``: mean size of done jobs of that level.
* ``last_job`` {id, status, time} and ``last_success`` {id, time} (time = end, else start).

The daily series has one entry per UTC day for the ``days`` days ending today (empty days
included, so gaps show), each job and restore counted on the day it started.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from vstor.errors import UsageError
from vstor.units import format_size

MB = 1_000_000


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _rate(good: int, bad: int) -> float | None:
    return good / (good + bad) if good + bad else None


def p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile: the ceil(0.95 n)-th smallest value; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(0.95 * len(ordered))) - 1]


def _when(record: dict) -> float | None:
    return record.get("ended") or record.get("started")


def _latest(jobs: list[dict]) -> dict | None:
    dated = [(w, j) for j in jobs if (w := _when(j)) is not None]
    return max(dated, key=lambda wj: wj[0])[1] if dated else None


def _scope(jobs: list[dict], restores: list[dict]) -> dict:
    status = [j.get("status") for j in jobs]
    verify = [j.get("verify") for j in jobs]
    done, failed = status.count("done"), status.count("failed")
    good = [r for r in restores if r.get("status") == "done"]
    times = [float(r["seconds"]) for r in good]
    speeds = [r["bytes"] / r["seconds"] / MB for r in good if r["seconds"] > 0]
    last = _latest(jobs)
    success = _latest([j for j in jobs if j.get("status") == "done"])
    return {
        "jobs": len(jobs),
        "done": done,
        "failed": failed,
        "completion_rate": _rate(done, failed),
        "verify_ok": verify.count("ok"),
        "verify_failed": verify.count("failed"),
        "verify_success_rate": _rate(verify.count("ok"), verify.count("failed")),
        "restores": len(good),
        "restores_failed": len(restores) - len(good),
        "restore_avg_s": _mean(times),
        "restore_p95_s": p95(times),
        "restore_mb_per_s_avg": _mean(speeds),
        "full_bytes_avg": _mean([j["bytes"] for j in jobs if j.get("status") == "done" and j["level"] == "full"]),
        "incremental_bytes_avg": _mean(
            [j["bytes"] for j in jobs if j.get("status") == "done" and j["level"] == "incremental"]
        ),
        "last_job": last and {"id": last["id"], "status": last["status"], "time": _when(last)},
        "last_success": success and {"id": success["id"], "time": _when(success)},
    }


def _day(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d")


def build_report(jobs: list[dict], restores: list[dict], now: float, days: int = 30) -> dict:
    """The report over all ``jobs`` and ``restores``; see the module docstring for each figure."""
    if days < 1:
        raise UsageError(f"invalid report window {days}: give at least 1 day")
    today = datetime.fromtimestamp(now, tz=UTC).date()
    window = [(today - timedelta(days=days - 1 - i)).isoformat() for i in range(days)]
    by_day: dict[str, tuple[list[dict], list[dict]]] = {d: ([], []) for d in window}
    for kind, records in ((0, jobs), (1, restores)):
        for r in records:
            if r.get("started") is not None and _day(r["started"]) in by_day:
                by_day[_day(r["started"])][kind].append(r)
    names = sorted({j["policy"] for j in jobs} | {r["policy"] for r in restores})
    return {
        "generated": now,
        "days": days,
        "overall": _scope(jobs, restores),
        "policies": {
            n: _scope([j for j in jobs if j["policy"] == n], [r for r in restores if r["policy"] == n]) for n in names
        },
        "daily": [{"day": d, **_scope(*by_day[d])} for d in window],
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}s"


def _size(x: float | None) -> str:
    return "-" if x is None else format_size(x, approx=True)  # averages: rounded, marked ~


def _stamp(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%MZ")


def _row(label: str, s: dict) -> list[str]:
    last = s["last_job"]
    return [
        label, str(s["jobs"]), _pct(s["completion_rate"]), _pct(s["verify_success_rate"]),
        _secs(s["restore_avg_s"]), _secs(s["restore_p95_s"]),
        "-" if s["restore_mb_per_s_avg"] is None else f"{s['restore_mb_per_s_avg']:.1f}",
        _size(s["full_bytes_avg"]), _size(s["incremental_bytes_avg"]),
        "-" if last is None else f"{last['id']} {last['status']} {_stamp(last['time'])}",
    ]


_HEADER = ["", "jobs", "completion", "verify ok", "restore avg", "restore p95", "restore MB/s",
           "full avg", "incr avg", "last job"]


def _table(rows: list[list[str]], text_last: bool) -> list[str]:
    """Columns padded to their widest cell: names left-aligned, numbers right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    left = {0, len(widths) - 1} if text_last else {0}
    return [
        "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        .rstrip()
        for r in rows
    ]


def render_text(report: dict) -> str:
    """The report as aligned text: the three headline figures (job completion, verify success,
    restore time), the last success and RPO exposure, then per-policy and per-day tables."""
    o = report["overall"]
    success = o["last_success"]
    if success is None:
        since = "none"
    else:
        age = report["generated"] - success["time"]
        since = f"{_stamp(success['time'])} (job {success['id']}), RPO exposure {age:.0f}s"
    lines = [
        f"Job completion rate   {_pct(o['completion_rate'])}  ({o['done']} done, {o['failed']} failed)",
        f"Verify success rate   {_pct(o['verify_success_rate'])}  ({o['verify_ok']} ok, {o['verify_failed']} failed)",
        f"Restore time          avg {_secs(o['restore_avg_s'])}, p95 {_secs(o['restore_p95_s'])}"
        f"  ({o['restores']} restores, {o['restores_failed']} failed)",
        f"Last success          {since}",
        "",
    ]
    rows = [["policy", *_HEADER[1:]], _row("(all)", o)]
    rows += [_row(name, s) for name, s in report["policies"].items()]
    lines += _table(rows, text_last=True)
    active = [d for d in report["daily"] if d["jobs"] or d["restores"]]  # the plot shows the empty days too
    lines += ["", f"Days with jobs or restores, of the last {report['days']} (UTC)"]
    lines += _table([["day", *_HEADER[1:-1]]] + [_row(d["day"], d)[:-1] for d in active], text_last=False)
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str) -> None:
    """Draw the daily completion and verify success rates (%) and restore time (avg, p95) and
    save them as a PNG at ``path``. Uses matplotlib's Agg canvas directly, so no display and
    no global pyplot state. Raises UsageError when matplotlib is missing or ``path`` cannot
    be written."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.dates import DateFormatter
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'vstor[plot]'") from None
    daily = report["daily"]
    days = [datetime.strptime(d["day"], "%Y-%m-%d") for d in daily]

    def series(key: str, scale: float = 1.0) -> list[float]:
        return [math.nan if d[key] is None else d[key] * scale for d in daily]

    fig = Figure(figsize=(10, 6), layout="constrained")
    FigureCanvasAgg(fig)
    rates, restore = fig.subplots(2, 1, sharex=True)
    rates.plot(days, series("completion_rate", 100), marker="o", label="job completion")
    rates.plot(days, series("verify_success_rate", 100), marker="s", label="verify success")
    rates.set_ylabel("%")
    rates.set_ylim(0, 105)
    rates.legend(loc="lower left")
    rates.set_title(f"vstor backups, last {report['days']} days (UTC)")
    restore.plot(days, series("restore_avg_s"), marker="o", label="restore avg")
    restore.plot(days, series("restore_p95_s"), marker="^", label="restore p95")
    restore.set_ylabel("seconds")
    restore.set_ylim(bottom=0)
    restore.legend(loc="upper left")
    pad = timedelta(hours=12)  # the whole window, so days without backups show as gaps
    restore.set_xlim(days[0] - pad, days[-1] + pad)
    restore.set_xticks(days[:: max(1, len(days) // 10)])
    restore.xaxis.set_major_formatter(DateFormatter("%m-%d"))
    try:
        fig.savefig(path, format="png")
    except OSError as e:
        raise UsageError(f"cannot write the plot to {path}: {e.strerror or e}") from None
