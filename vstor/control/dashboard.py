"""The read-only dashboard at ``/`` of the metrics port: one HTML page, charts as inline SVG drawn
here, no JavaScript and no external assets (it refreshes itself every 10 s with a meta tag).

``gather`` reads the live objects into a plain dict; ``page`` turns that dict and the pair-lag
samples into HTML and is pure, so the tests render it without a daemon.
"""

from __future__ import annotations

import html
import os
import time
from typing import Any

from vstor.units import format_size

WIDTH, HEIGHT, PAD = 760, 220, 40
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def gather(src: Any) -> dict:
    """Status, capacity, volumes, pairs and drives from the daemon's objects (metrics.Sources)."""
    st = src.store
    usage = st.usage()
    io = src.fs.io.snapshot() if src.fs is not None else {}
    vols = [{"name": v.name, "size": v.size, "mapped": st.volume_usage(v.id),
             "read_bytes": (io.get((v.id, "read")) or [0, 0])[1],
             "write_bytes": (io.get((v.id, "write")) or [0, 0])[1]} for v in st.volumes()]
    return {"pool": os.path.abspath(st.pool), "pid": os.getpid(), "now": time.time(),
            "failed": st.journal.failed or "",
            "maintenance_error": (getattr(src.reclaimer, "last_error", "") if src.reclaimer else "") or "",
            "usage": usage, "volumes": vols,
            "pairs": src.replication.status() if src.replication else [],
            "drives": src.media.drive_rows() if src.media else []}


def _e(v: object) -> str:
    return html.escape(str(v))


def _table(tid: str, head: list[str], rows: list[list[object]]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    if not rows:
        body = f'<tr><td colspan="{len(head)}">none</td></tr>'
    return f'<table id="{tid}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def lag_chart(samples: list[tuple[float, dict[str, float]]], now: float, span: float = 3600.0) -> str:
    """An SVG line chart of each group's lag over the last ``span`` seconds."""
    groups = sorted({g for _, d in samples for g in d})
    top = max([v for _, d in samples for v in d.values()] + [1.0])
    w, h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD

    def xy(t: float, v: float) -> str:
        return f"{PAD + w * max(0.0, 1 - (now - t) / span):.1f},{PAD + h * (1 - v / top):.1f}"

    parts = [f'<svg id="lag-chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="pair lag over the last hour">',
             f'<rect x="{PAD}" y="{PAD}" width="{w}" height="{h}" fill="#fafafa" stroke="#999"/>',
             f'<text x="{PAD}" y="{PAD - 8}" font-size="12">lag, seconds (max {top:.3g})</text>',
             f'<text x="{PAD}" y="{HEIGHT - 12}" font-size="11">-60 min</text>',
             f'<text x="{WIDTH - PAD}" y="{HEIGHT - 12}" font-size="11" text-anchor="end">now</text>']
    for i, g in enumerate(groups):
        pts = " ".join(xy(t, d[g]) for t, d in samples if g in d and now - t <= span)
        colour = COLOURS[i % len(COLOURS)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>')
        parts.append(f'<text x="{WIDTH - PAD}" y="{PAD + 14 + 14 * i}" font-size="12" text-anchor="end" '
                     f'fill="{colour}">{_e(g)}</text>')
    if not groups:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" font-size="13">'
                     'no replication pairs</text>')
    parts.append("</svg>")
    return "".join(parts)


def capacity_bar(usage: dict) -> str:
    """One horizontal SVG bar: journal bytes against free space."""
    used, free = usage["journal_bytes"], usage["free_bytes"]
    frac = used / (used + free) if used + free else 0.0
    w = WIDTH - 2 * PAD
    return (f'<svg id="capacity-chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="50">'
            f'<rect x="{PAD}" y="10" width="{w}" height="24" fill="#e8f0e8" stroke="#999"/>'
            f'<rect x="{PAD}" y="10" width="{w * frac:.1f}" height="24" fill="#4a7"/>'
            f'<text x="{PAD + 6}" y="27" font-size="12">journal {_e(format_size(used))} of '
            f'{_e(format_size(used + free))} ({100 * frac:.1f}%)</text></svg>')


def page(data: dict, samples: list[tuple[float, dict[str, float]]]) -> str:
    u = data["usage"]
    state = "FAILED: " + data["failed"] if data["failed"] else "running"
    if data["maintenance_error"]:
        state += f"; maintenance failing: {data['maintenance_error']}"
    vols = _table("volumes", ["volume", "size", "mapped", "read", "written"],
                  [[v["name"], format_size(v["size"]), format_size(v["mapped"]), format_size(v["read_bytes"]),
                    format_size(v["write_bytes"])] for v in data["volumes"]])
    pairs = _table("pairs", ["group", "role", "state", "lag (s)", "sent", "throughput/s"],
                   [[p["group"], p.get("role", ""), p.get("state", ""), p.get("lag_seconds", 0),
                     format_size(p.get("bytes_sent", 0) or 0), format_size(p.get("throughput", 0) or 0)]
                    for p in data["pairs"]])
    drives = _table("drives", ["library", "drive", "type", "medium", "open", "read", "written"],
                    [[d["library"], d["drive"], d["type"], d["barcode"] or "empty", "yes" if d["open"] else "no",
                      format_size(d["read_bytes"]), format_size(d["write_bytes"])] for d in data["drives"]])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>vstor {_e(data['pool'])}</title>
<style>body{{font-family:sans-serif;margin:20px;color:#222}}table{{border-collapse:collapse;margin:6px 0 18px}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:left}}th{{background:#eee}}h2{{margin:14px 0 4px}}
.bad{{color:#b00;font-weight:bold}}</style></head>
<body><h1>vstor array</h1>
<p id="status" class="{'bad' if data['failed'] or data['maintenance_error'] else ''}">pool {_e(data['pool'])},
daemon pid {_e(data['pid'])}: {_e(state)}</p>
<h2>Capacity</h2>{capacity_bar(u)}
<p>{_e(format_size(u['mapped_bytes']))} mapped, {_e(u['segments'])} journal segments, tail {_e(u['tail'])},
durable {_e(u['durable'])}</p>
<h2>Volumes</h2>{vols}
<h2>Replication lag, last hour</h2>{lag_chart(samples, data['now'])}
{pairs}
<h2>Drives</h2>{drives}
<p><a href="/metrics">/metrics</a> (Prometheus)</p>
</body></html>
"""


def render(src: Any, samples: list[tuple[float, dict[str, float]]]) -> str:
    return page(gather(src), samples)
