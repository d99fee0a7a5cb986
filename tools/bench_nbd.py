"""NBD benchmark: vstor's NBD server against nbdkit's file plugin, both driven by fio's nbd engine.

    .venv/bin/python -m tools.bench_nbd [--size 1G] [--servers nbdkit,vstor,nbdkit-tls,vstor-tls]
                                        [--rounds N] [--runtime S] [--jobs NAME,...] [--nbd-poll-us US]
                                        [--json-out FILE]
                                        [--keep-page-reporting]

A lab (vm/lab.py) of two network namespaces joined by a veth: the servers run in site B, fio runs in
site A (the test host) and dials B's address, so every byte crosses the same link. One server at a
time is set up, measured and torn down: nbdkit's file plugin over a sparse file of --size bytes (the
baseline), and a vstor array (pool defaults: journal and checksums on) exporting a volume of the same
size. The "-tls" servers require TLS (nbdkit --tls=require, vstor --nbd-tls-dir) with certificates
from vstor's pki; fio then dials nbds:// and finds its CA and client certificate in /etc/pki/libnbd,
which an overlay shows only in fio's own mount namespace (libnbd 1.14 refuses ?tls-certificates= in
the URIs of fio and nbdfuse), with an /etc/hosts entry for the server's certificate name.
Ten figures per server, in this order: 1 MiB sequential write of the whole export at iodepth 1,
then 16 (each ends with a FLUSH: end_fsync=1), 1 MiB sequential read at 1 and 16, then over four
connections at iodepth 4 each, each reading its quarter (as nbdcopy splits a copy: multi-conn), 4 KiB
random write (time-based, FLUSH at the end) at 1 and 16, 4 KiB random read at 1 and 16, then over four
connections at 4 each. The page cache is dropped before each read. Ratios: vstor/nbdkit (target >= 0.8
on the eight single-connection figures), vstor-tls/nbdkit-tls, and TLS
against plain for each server. With --rounds N the list runs N times, round N starting at the Nth
server; each ratio is the median of the per-round ratios. MB = 10^6 bytes. The VM's free page
reporting is held off for the run (benchlib/hostmem.py), as bench_fio does: with it on, which server
paid the host's faults on freshly used page-cache pages depended on timing (nbdkit's own 1 MiB reads
moved threefold between rounds, docs/benchmarks-history.md section 10); --keep-page-reporting leaves it on.
Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.benchlib import options
from tools.benchlib.counters import with_server_cpu
from tools.benchlib.fio import fio_version
from tools.benchlib.hostmem import steady_memory
from tools.benchlib.nbdservers import NbdkitServer, Server, VstorServer, make_certs, tool_missing
from tools.benchlib.procs import BenchError, drop_caches, install_signal_handlers, signals_deferred
from tools.benchlib.report import combine, cpu_note, cpu_table, round_ratio, table
from tools.benchlib.vcpu import idle_polling
from vm.lab import Lab

SERVERS = ("nbdkit", "vstor", "nbdkit-tls", "vstor-tls")
SERVER_CN = "bench-server"  # the TLS server certificate's name; fio resolves it through its /etc/hosts


@dataclass(frozen=True)
class NbdJob:
    name: str
    rw: str
    bs: str
    iodepth: int
    metric: str  # "MB/s" or "IOPS"
    conns: int = 1  # fio jobs, one NBD connection each (multi-conn); a sequential job splits the export

    @property
    def direction(self) -> str:
        return "write" if "write" in self.rw else "read"

    @property
    def time_based(self) -> bool:
        return self.rw.startswith("rand")


def _jobs() -> tuple[NbdJob, ...]:
    out = []
    for label, rw, bs, metric in (("seq-write", "write", "1M", "MB/s"), ("seq-read", "read", "1M", "MB/s"),
                                  ("rand-write", "randwrite", "4k", "IOPS"), ("rand-read", "randread", "4k", "IOPS")):
        out += [NbdJob(f"{label}-qd{qd}", rw, bs, qd, metric) for qd in (1, 16)]
        if rw.endswith("read"):  # reads also over four connections at depth 4 each (no target)
            out.append(NbdJob(f"{label}-4conn", rw, bs, 4, metric, conns=4))
    return tuple(out)


JOBS = _jobs()


def fio_args(job: NbdJob, uri: str, size: int, runtime: int, seq_cap: int) -> list[str]:
    part = size // job.conns if not job.time_based else size  # a sequential pass: each connection its part
    a = ["fio", f"--name={job.name}", "--ioengine=nbd", f"--uri={uri}", f"--rw={job.rw}", f"--bs={job.bs}",
         f"--size={part}", f"--iodepth={job.iodepth}", f"--numjobs={job.conns}", "--output-format=json"]
    if job.conns > 1:
        a += ["--group_reporting", *([f"--offset_increment={part}"] if not job.time_based else [])]
    a += ["--time_based=1", f"--runtime={runtime}"] if job.time_based else [f"--runtime={seq_cap}"]
    if job.direction == "write":
        a.append("--end_fsync=1")  # NBD FLUSH: the figure includes making the data durable
    return a


def run_fio(cmd: list[str], job: NbdJob, timeout: float) -> dict[str, Any]:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"fio {job.name}: no result after {timeout:.0f}s") from exc
    try:
        fj = json.loads(res.stdout[res.stdout.index("{"):])["jobs"][0]
    except (ValueError, KeyError, IndexError) as exc:
        raise BenchError(f"fio {job.name} failed ({res.returncode}): {res.stderr.strip()[-500:]}") from exc
    if res.returncode or fj.get("error"):
        raise BenchError(f"fio {job.name}: exit {res.returncode}, error {fj.get('error')}: {res.stderr.strip()[-500:]}")
    d = fj[job.direction]
    return {"value": round(d["bw_bytes"] / 1e6, 1) if job.metric == "MB/s" else round(d["iops"]),
            "metric": job.metric, "bytes": d["io_bytes"], "ios": d["total_ios"], "runtime_s": d["runtime"] / 1000,
            "lat_mean_us": round(d["lat_ns"]["mean"] / 1000, 1),
            "clat_p99_us": round(d.get("clat_ns", {}).get("percentile", {}).get("99.000000", 0) / 1000, 1)}


class Client:
    """Runs fio in the test host's namespace; for nbds:// inside a private mount namespace whose /etc
    is an overlay holding pki/libnbd (the client certificates) and hosts (the server's name)."""

    def __init__(self, lab: Lab, site: str, etc_overlay: Path | None) -> None:
        self.lab, self.site, self.etc = lab, site, etc_overlay

    def wrap(self, argv: list[str], tls: bool) -> list[str]:
        if not tls:
            return self.lab.command(self.site, argv)
        lower = shlex.quote(f"{self.etc}:/etc")
        inner = f"mount -t overlay overlay -o lowerdir={lower} /etc && exec {shlex.join(argv)}"
        return self.lab.command(self.site, ["unshare", "--mount", "sh", "-c", inner])


def measure(server: Server, client: Client, a: argparse.Namespace, res: dict[str, Any]) -> None:
    res.update({"kind": server.kind, "tls": server.tls is not None, "jobs": {}, "error": None})
    print(f"== {server.name}", flush=True)
    try:
        with server as uri:
            if server.tls:
                uri = uri.replace(server.addr, SERVER_CN, 1)
            for job in a.job_list:
                drop_caches() if job.direction == "read" else os.sync()
                cmd = client.wrap(fio_args(job, uri, a.size_bytes, a.runtime, a.seq_cap), server.tls is not None)
                timeout = (a.runtime if job.time_based else a.seq_cap) + 120
                r = res["jobs"][job.name] = with_server_cpu(server.pid, run_fio, cmd, job, timeout)
                r["command"] = cmd
                print(f"   {job.name:<14} {r['value']:>10,} {job.metric:<4}  lat mean {r['lat_mean_us']} us, "
                      f"p99 {r['clat_p99_us']} us, {r['runtime_s']:.1f} s{cpu_note(r)}", flush=True)
    except Exception as exc:  # one server failing (torn down by its with) must not stop the others
        res["error"] = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
        print(f"   FAILED: {res['error']}", flush=True)


PAIRS = (("vstor", "nbdkit"), ("vstor-tls", "nbdkit-tls"), ("vstor-tls", "vstor"), ("nbdkit-tls", "nbdkit"))


def ratios(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    out = {f"{num}/{den}": round_ratio(rounds, num, den, JOBS) for num, den in PAIRS}
    return {pair: row for pair, row in out.items() if any(v is not None for v in row.values())}


def render(combined: dict[str, dict[str, Any]], rat: dict[str, dict[str, float | None]]) -> str:
    def fmt(r: dict[str, Any] | None) -> str:
        return "-" if r is None else (f"{r['value']:,.1f}" if r["metric"] == "MB/s" else f"{r['value']:,.0f}")

    head = ["server", *(f"{j.name} {j.metric}" for j in JOBS)]
    out = ["RESULTS (MB/s = 10^6 bytes/s; writes include the final FLUSH)",
           table(head, [[n, *(fmt(s["jobs"].get(j.name)) for j in JOBS)] for n, s in combined.items()])]
    if rat:
        out += ["", "RATIOS (above 1: the first is faster; target vstor/nbdkit >= 0.8)",
                table(["ratio", *(j.name for j in JOBS)],
                      [[p, *("-" if row[j.name] is None else f"{row[j.name]:.2f}" for j in JOBS)]
                       for p, row in rat.items()])]
    out += cpu_table(combined, JOBS, "SERVER CPU PER REQUEST", "server")
    out += [f"{n}: FAILED: {s['error'].splitlines()[0]}" for n, s in combined.items() if s["error"]]
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1G", help="size of the export (default 1G)")
    p.add_argument("--servers", default=",".join(SERVERS),
                   help=f"comma list, in run order (default {','.join(SERVERS)})")
    p.add_argument("--rounds", type=int, default=1, help="run every server this many times (default 1)")
    p.add_argument("--runtime", type=int, default=10, help="seconds of each random job (default 10)")
    p.add_argument("--seq-cap", type=int, default=120, help="time cap of each sequential pass (default 120)")
    p.add_argument("--jobs", default=",".join(j.name for j in JOBS),
                   help="comma list of the jobs to run (default all eight, in their fixed order)")
    p.add_argument("--nbd-poll-us", type=int, metavar="US",
                   help="vstor's 'array start --nbd-poll-us' (default: the daemon's, 40; 0 for an A/B without polling)")
    options.add_common(p)
    a = p.parse_args(argv)
    a.size_bytes = options.size(p, a.size)
    a.server_list = options.choices(p, a.servers, SERVERS, "server")
    names = [j for j in a.jobs.split(",") if j]
    for j in names:
        if j not in {job.name for job in JOBS}:
            p.error(f"unknown job {j!r}: choose from {', '.join(job.name for job in JOBS)}")
    a.job_list = [job for job in JOBS if job.name in names]
    return a


def make_server(name: str, workdir: Path, a: argparse.Namespace, lab: Lab, certs: dict[str, Path]) -> Server:
    cls = VstorServer if name.startswith("vstor") else NbdkitServer
    tls = certs["server"] if name.endswith("-tls") else None  # both read nbdkit's layout
    server = cls(name, workdir, a.size_bytes, lab.ns("b"), lab.address("b"), tls)
    if isinstance(server, VstorServer) and a.nbd_poll_us is not None:
        server.start_args = ("--nbd-poll-us", str(a.nbd_poll_us))
    return server


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if why := tool_missing():
        raise SystemExit(f"bench_nbd: {why}")
    install_signal_handlers()
    workdir = Path(tempfile.mkdtemp(prefix="vstor-bench-nbd-", dir=a.workdir))
    lab = Lab(f"bn{uuid.uuid4().hex[:6]}")
    rounds: list[dict[str, dict[str, Any]]] = []
    head = {"command": shlex.join(sys.orig_argv), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "kernel": platform.release(), "cpus": os.cpu_count(), "fio": fio_version(), "size": a.size_bytes,
            "random_runtime_s": a.runtime, "jobs": [j.__dict__ for j in JOBS],
            "commit": subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short",
                                      "HEAD"], capture_output=True, text=True).stdout.strip()}
    interrupted = False
    memory = contextlib.ExitStack()
    try:
        print(f"$ {head['command']}\n{head['date']}  commit {head['commit']}, kernel {head['kernel']}, "
              f"{head['cpus']} CPUs, {head['fio']}; "
              f"fio --ioengine=nbd in namespace {lab.ns('a')} -> servers in {lab.ns('b')}, {a.size} export", flush=True)
        head["host_memory"] = memory.enter_context(steady_memory(not a.keep_page_reporting))
        print(head["host_memory"], flush=True)
        head["vcpu_idle"] = idle_polling()
        print(head["vcpu_idle"], flush=True)
        lab.up()
        pki, server_dir, client_dir = make_certs(workdir / "tls", SERVER_CN)
        etc = workdir / "etc"
        (etc / "pki").mkdir(parents=True)
        (etc / "pki" / "libnbd").symlink_to(client_dir)
        (etc / "hosts").write_text(Path("/etc/hosts").read_text() + f"\n{lab.address('b')} {SERVER_CN}\n")
        certs = {"pki": pki, "server": server_dir}
        client = Client(lab, "a", etc)
        for n in range(a.rounds):
            if a.rounds > 1:
                print(f"\n=== round {n + 1} of {a.rounds}", flush=True)
            order = a.server_list[n % len(a.server_list):] + a.server_list[: n % len(a.server_list)]
            rounds.append({})
            for name in order:
                rounds[-1][name] = {}
                measure(make_server(name, workdir, a, lab, certs), client, a, rounds[-1][name])
    except KeyboardInterrupt as exc:
        interrupted = True
        rounds = [{k: v for k, v in r.items() if v} for r in rounds]
        print(f"\ninterrupted ({exc or 'Ctrl-C'}): everything set up was undone", file=sys.stderr, flush=True)
    finally:
        with signals_deferred():
            lab.down()
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
            memory.close()
    combined = combine(rounds, JOBS, keep=("kind", "tls")) if rounds else {}
    rat = ratios(rounds)
    print()
    print(render(combined, rat))
    if a.json_out:
        doc = {**head, "interrupted": interrupted, "servers": combined, "ratios": rat, "rounds": rounds}
        Path(a.json_out).write_text(json.dumps(doc, indent=2) + "\n")
    return 130 if interrupted else int(any(s["error"] for s in combined.values()))


if __name__ == "__main__":
    sys.exit(main())
