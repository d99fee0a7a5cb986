"""The benchmarks' one table printer, and bench_fio's printed report: one row per target, the ratios,
and vstor's memory and replay figures."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any, Protocol

from .fio import JOBS, Job

__all__ = ["Results", "combine", "cpu_note", "cpu_table", "paired_ratios", "ratio_pairs", "ratios", "render",
           "round_ratio", "table"]

Results = dict[str, dict[str, Any]]


class Named(Protocol):
    """A job of any tool (fio.Job, radostargets.RJob, bench_nbd's NbdJob): what combine needs.
    Read-only, as the jobs are frozen dataclasses."""

    @property
    def name(self) -> str: ...


def _value(results: Results, target: str, job: str) -> float | None:
    r = results.get(target, {}).get("jobs", {}).get(job)
    return None if r is None else float(r["value"])


def ratio_pairs(results: Results) -> list[tuple[str, str]]:
    vstors = [name for name, r in results.items() if r["kind"] == "vstor"]
    pairs = [(v, base) for v in vstors for base in ("passthrough", "passthrough-copy", "nbdfuse")]
    pairs += [("passthrough", "raw"), ("passthrough", "passthrough-copy")]
    return [(a, b) for a, b in pairs if a in results and b in results]


def ratios(results: Results, jobs: tuple[Job, ...] = JOBS) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for a, b in ratio_pairs(results):
        row: dict[str, float | None] = {}
        for job in jobs:
            va, vb = _value(results, a, job.name), _value(results, b, job.name)
            row[job.name] = round(va / vb, 3) if va is not None and vb else None
        out[f"{a}/{b}"] = row
    return out


def paired_ratios(rounds: list[Results], jobs: tuple[Job, ...] = JOBS) -> dict[str, dict[str, float | None]]:
    """Each round's ratios (targets measured back to back, so they share the machine's state
    at that time), then the median per pair and job over the rounds."""
    per_round = [ratios(r, jobs) for r in rounds]
    out: dict[str, dict[str, float | None]] = {}
    for pair in per_round[0] if per_round else {}:
        row: dict[str, float | None] = {}
        for job in jobs:
            vals = sorted(v for r in per_round if (v := r.get(pair, {}).get(job.name)) is not None)
            row[job.name] = statistics.median(vals) if vals else None
        out[pair] = row
    return out


def combine(rounds: list[Results], jobs: Sequence[Named] = JOBS, keep: tuple[str, ...] = ("kind",)) -> Results:
    """One result per target: per job, the run with the median value over the rounds (with every
    round's value); ``keep``: keys copied from the target's first round."""
    out: Results = {}
    for name in dict.fromkeys(t for r in rounds for t in r):
        seen = [r[name] for r in rounds if name in r]
        picked: dict[str, Any] = {}
        for job in jobs:
            runs = sorted((r["jobs"][job.name] for r in seen if job.name in r.get("jobs", {})),
                          key=lambda x: x["value"])
            if runs:
                picked[job.name] = dict(runs[len(runs) // 2], rounds=[x["value"] for x in runs])
        errors = [r["error"] for r in seen if r.get("error")]
        out[name] = {**{k: seen[0].get(k) for k in keep}, "jobs": picked, "extras": seen[-1].get("extras", {}),
                     "error": errors[0] if errors else None}
    return out


def round_ratio(rounds: list[Results], num: str, den: str, jobs: Sequence[Named]) -> dict[str, float | None]:
    """``num`` / ``den`` per job: the median of the rounds' ratios (both measured in the same round)."""
    out: dict[str, float | None] = {}
    for job in jobs:
        vals = [r[num]["jobs"][job.name]["value"] / r[den]["jobs"][job.name]["value"] for r in rounds
                if job.name in r.get(num, {}).get("jobs", {}) and job.name in r.get(den, {}).get("jobs", {})
                and r[den]["jobs"][job.name]["value"]]
        out[job.name] = round(statistics.median(vals), 3) if vals else None
    return out


def table(header: list[str], rows: list[list[str]], first_left: bool = True) -> str:
    """Columns two spaces apart, each as wide as its widest cell, right-aligned (the first one
    left-aligned if first_left); the header is the first line. Trailing spaces are cut."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [c.rjust(w) for c, w in zip(r, widths, strict=True)]
        if first_left:
            cells[0] = r[0].ljust(widths[0])
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _fmt(v: float | None, metric: str) -> str:
    if v is None:
        return "-"
    return f"{v:,.1f}" if metric == "MB/s" else f"{v:,.0f}"


def render(results: Results, rat: dict[str, dict[str, float | None]] | None = None,
           jobs: tuple[Job, ...] = JOBS) -> str:
    header = ["target", *(f"{j.name} {j.metric}" for j in jobs)]
    rows = [[name, *(_fmt(_value(results, name, j.name), j.metric) for j in jobs)] for name in results]
    out = ["RESULTS (MB/s = 10^6 bytes/s; write figures include the final fdatasync)", table(header, rows)]

    rat = ratios(results, jobs) if rat is None else rat
    if rat:
        rows = [[pair, *("-" if row[j.name] is None else f"{row[j.name]:.2f}" for j in jobs)]
                for pair, row in rat.items()]
        out += ["", "RATIOS (above 1: the first is faster)", table(["ratio", *(j.name for j in jobs)], rows)]

    out += cpu_table(results, jobs, "FUSE SERVER CPU PER REQUEST", "target")

    notes = []
    for name, r in results.items():
        if r.get("error"):
            notes.append(f"{name}: FAILED: {r['error'].splitlines()[0]}")
        for job, jr in r.get("jobs", {}).items():
            if jr.get("note"):
                notes.append(f"{name} {job}: {jr['note']}")
        notes += _extras(name, r.get("extras", {}))
    if notes:
        out += ["", *notes]
    return "\n".join(out)


def cpu_note(jr: dict[str, Any]) -> str:
    """The tail of a job's progress line: its server CPU per request, where measured."""
    c = jr.get("server_cpu_us")
    return f", server CPU {c['user']:,.1f} user + {c['sys']:,.1f} sys us/request" if c else ""


def _cpu_cell(jr: dict[str, Any] | None) -> str:
    """A job's server CPU per request as "user+sys" (us), or "-" where it was not measured."""
    c = (jr or {}).get("server_cpu_us")
    return f"{c['user']:,.1f}+{c['sys']:,.1f}" if c else "-"


def cpu_table(results: Results, jobs: Sequence[Named], title: str, first: str) -> list[str]:
    """The lines of a table of each server's CPU per request in each job (servers with no
    figure left out; no lines if none has one), after a blank line and ``title``."""
    rows = [[name, *(_cpu_cell(r.get("jobs", {}).get(j.name)) for j in jobs)] for name, r in results.items()
            if any(_cpu_cell(jr) != "-" for jr in r.get("jobs", {}).values())]
    if not rows:
        return []
    return ["", f"{title} (us, user+sys, all its threads: background work included)",
            table([first, *(j.name for j in jobs)], rows)]


def _extras(name: str, ex: dict[str, Any]) -> list[str]:
    lines = []
    m = ex.get("rss")
    if m and "allocated_bytes" in m:
        after = ", ".join(f"{job} {kib / 1024:.1f}" for job, kib in m["after_kib"].items())
        marginal = m["marginal_mib_per_tib"]
        lines.append(
            f"{name}: daemon RSS MiB: idle {m['idle_kib'] / 1024:.1f}, after {after}; growth over the "
            f"sequential write ({m['allocated_bytes'] / 2**30:.2f} GiB allocated) -> "
            f"{m['growth_mib_per_tib']:,.0f} MiB per TiB allocated (marginal, 2nd half of the write: "
            + ("n/a" if marginal is None else f"{marginal:,.0f} MiB per TiB") + ")")
    rec = ex.get("recovery")
    if isinstance(rec, dict):
        mib = (rec.get("bytes") or 0) / 2**20
        lines.append(
            f"{name}: journal replay after kill -9: {rec.get('records')} records, {mib:,.1f} MiB in "
            f"{rec.get('seconds')} s ({rec.get('mb_per_s')} MB/s); "
            f"'array start' took {ex.get('start_seconds')} s")
    elif "recovery" in ex:
        lines.append(f"{name}: journal replay after kill -9: status reports {rec!r}")
    for line in ex.get("request_sizes", []):
        lines.append(f"{name}: {line}")
    return lines
