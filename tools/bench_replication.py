"""Replication costs: throughput against a bare link, lag under load, host write cost, lz4 savings.

    .venv/bin/python -m tools.bench_replication [--quick] [--parts 1,2,3,4,5] [--dir DIR] [--json-out FILE] [--keep]

Every part builds fresh DR-lab sites (tests/replkit.py: two network namespaces, an array in each,
group "g" of A paired to B) and tears them down afterwards, also on error or Ctrl-C.
Part 1 (unshaped link): fio fills SIZE (2 GiB, --quick 1 GiB) of a volume of g with incompressible
  1 MiB O_DIRECT writes while paired; replication throughput = SIZE / (first write .. pair status
  lag_records == 0). Baseline, in the same run: SIZE bytes from A to B over plain TCP (and over TLS
  with the pair's certificates, for reference) by a small Python sender/receiver. Ratio repl / TCP.
Part 2: the same on a link shaped to 1gbit (Lab(tag, rate="1gbit"): tbf on A's egress): replication
  as a fraction of 125 MB/s (target >= 0.9), with the shaped link's TCP goodput for reference.
Part 3: 1gbit link, fio paced at 60 MB/s (1 MiB O_DIRECT) for 20 s (--quick 10 s); pair status
  lag_seconds sampled every 0.5 s: p50 / p99 / max (target < 1 s).
Part 4: fio 1 MiB sequential O_DIRECT writes of SIZE on a volume in no group, then on a volume of g
  once paired: host MB/s of both and their ratio (target >= 0.9).
Part 5: the same 256 MiB of log-like text (dd, O_DIRECT) into a volume of a pair made with
  --compress lz4 and into one of a pair without: bytes_sent of each once drained, and their ratio.
Status is the daemon's pair.status, what `vstor pair status G --json` prints. Pairs get
--journal-limit 8G (option), so that a burst beyond the default 1G does not suspend them.
MB = 10^6 bytes. Needs root (namespaces, FUSE) and fio. Both sites share this machine's CPUs and disk.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from tests import replkit
from tests.replkit import Sites, make_sites, teardown
from tools.benchlib.fio import parse_job, run_fio, stop_fio
from tools.benchlib.procs import BenchError, Terminated, signals_deferred
from tools.benchlib.stdoutguard import stdout_checked
from vm.lab import Lab
from vstor.cli.common import daemon_request
from vstor.errors import VstorError
from vstor.replication import pki

MB, MIB, GIB = 10**6, 1 << 20, 1 << 30
LINK_1G = 125 * MB
NET_PORT = 7460  # the baseline's receiver (the arrays listen on 7450)
STATUS_ERRORS: list[str] = []


def say(msg: str) -> None:
    print(msg, flush=True)


# -- the bare baseline: a sender in A's namespace, a receiver in B's ------------------------------
def net_peer(role: str, addr: str, nbytes: int, tls: str) -> None:
    """Child process: 'sink' receives until EOF and prints bytes and seconds; 'source' sends nbytes."""
    host, port = addr.rsplit(":", 1)
    ctx = pki.tls_context(tls, "site-b" if role == "sink" else "site-a", server=role == "sink") if tls else None
    if role == "sink":
        with socket.create_server((host, int(port))) as srv:
            print("ready", flush=True)
            conn, _ = srv.accept()
            sock = ctx.wrap_socket(conn, server_side=True) if ctx else conn
            buf, n, t0 = bytearray(MIB), 0, 0.0
            while k := sock.recv_into(buf):
                t0, n = t0 or time.monotonic(), n + k
            print(json.dumps({"bytes": n, "seconds": time.monotonic() - t0}), flush=True)
            sock.close()
        return
    raw = socket.create_connection((host, int(port)))
    sock = ctx.wrap_socket(raw) if ctx else raw
    block = os.urandom(MIB)
    for _ in range(nbytes // MIB):
        sock.sendall(block)
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):  # until the sink closes (this also reads TLS tickets: no RST on close)
        pass
    sock.close()


def link_rate(s: Sites, nbytes: int, tls: bool = False) -> float:
    """Bytes/s of one stream from A to B, measured at B from the first byte to EOF."""
    addr, extra = f"{s.lab.address('b')}:{NET_PORT}", [s.tls] if tls else []
    me = [sys.executable, "-m", "tools.bench_replication"]
    with subprocess.Popen(s.lab.command("b", [*me, "_sink", addr, "0", *extra]), stdout=subprocess.PIPE,
                          text=True) as sink:
        try:
            if sink.stdout is None or sink.stdout.readline().strip() != "ready":
                raise BenchError("the baseline receiver did not start")
            subprocess.run(s.lab.command("a", [*me, "_source", addr, str(nbytes), *extra]), check=True, timeout=600)
            res = json.loads(sink.communicate(timeout=60)[0])
        finally:
            sink.kill()
    if res["bytes"] != nbytes:
        raise BenchError(f"baseline received {res['bytes']} of {nbytes} bytes")
    return res["bytes"] / res["seconds"]


# -- sites, volumes, writers, status ----------------------------------------------------------------
def install_signal_handlers() -> None:
    """SIGINT, SIGTERM and SIGHUP raise, so that finally blocks tear the sites down. Not in a child that
    pyroute2 forked for vm/lab.py (and stops with SIGTERM): there they only end it; with the handler
    inherited, such a child went on running this program and tore the lab being made down."""
    main = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != main:
            os._exit(128 + signum)
        raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def fresh_sites(base: Path, made: list, rate: str | None) -> Sites:
    """replkit.make_sites, with its lab made as Lab(tag, rate): tbf on A's egress when rate is set."""
    base.mkdir(parents=True)
    with mock.patch.object(replkit, "Lab", functools.partial(Lab, rate=rate)):
        return make_sites(base, made)


def paired_volume(s: Sites, a: argparse.Namespace, name: str, size: int, group: str = "g", *extra: str) -> str:
    """Volume NAME alone in GROUP on A, paired to B (pair create EXTRA); its image path."""
    s.a.create(name, f"{size >> 20}M")
    s.a.vstor("group", "create", group, "--volumes", name)
    s.pair(group, extra=("--journal-limit", a.journal_limit, *extra))
    return s.a.image(name)


def status(s: Sites, group: str = "g", tries: int = 5) -> dict:
    """A's pair.status of GROUP; a failed request is retried, and recorded in STATUS_ERRORS."""
    for attempt in range(tries):
        try:
            st = daemon_request(s.a.pool, "pair.status", group=group)[0]
            break
        except VstorError as exc:  # seen: "internal error: deque mutated during iteration" (a daemon race)
            STATUS_ERRORS.append(f"{type(exc).__name__}: {exc}")
            if attempt == tries - 1:
                raise
            time.sleep(0.02)
    if st["state"] not in ("PAIR", "PFUL"):
        raise BenchError(f"pair {group} went {st['state']}: {st.get('reason') or st.get('last_error')}")
    return st


def fio(path: str, size: int, *extra: str) -> list[str]:
    return ["fio", "--name=w", f"--filename={path}", "--rw=write", "--bs=1M", f"--size={size}", "--ioengine=psync",
            "--direct=1", "--refill_buffers=1", "--allow_file_create=0", "--output-format=json", *extra]


@contextlib.contextmanager
def writer(cmd: list[str]) -> Iterator[subprocess.Popen[str]]:
    """Run fio or dd; make sure it has ended on leaving (benchlib.fio.stop_fio: SIGINT, then SIGKILL)."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            yield proc
        finally:
            stop_fio(proc, grace=20)


def write_and_drain(s: Sites, cmd: list[str], group: str = "g", timeout: float = 600) -> dict:
    """Run the writer (fio or dd); poll status until it is done and B has acknowledged every record."""
    t0, r = time.monotonic(), dict[str, Any]()
    with writer(cmd) as proc:
        while True:
            st = status(s, group)
            if not r and proc.poll() is not None:
                out, err = proc.communicate()
                if cmd[0] != "fio" and proc.returncode:
                    raise BenchError(f"{cmd[0]} failed ({proc.returncode}): {err.strip()[-500:]}")
                r = {"host": parse_job(out, err, proc.returncode, "w")["write"] if cmd[0] == "fio" else {},
                     "host_done_s": time.monotonic() - t0, "sent_at_host_done": st["bytes_sent"]}
            elif r and st["lag_records"] == 0:
                return {**r, "drained_s": time.monotonic() - t0, "bytes_sent": st["bytes_sent"]}
            if time.monotonic() - t0 > timeout:
                raise BenchError(f"not drained after {timeout:.0f}s: {st}")
            time.sleep(0.05)


# -- the parts --------------------------------------------------------------------------------------
def part12(s: Sites, a: argparse.Namespace) -> dict:
    """Parts 1 and 2: the bare link, then SIZE written while paired, from the first write until drained."""
    shaped = s.lab.rate is not None
    tcp = link_rate(s, a.size // 4 if shaped else a.size)  # a quarter is plenty on the slow, steady link
    tls = 0.0 if shaped else link_rate(s, a.size, tls=True)
    r = write_and_drain(s, fio(paired_volume(s, a, "v", a.size), a.size))
    repl, tail_s = a.size / r["drained_s"], max(1e-9, r["drained_s"] - r["host_done_s"])
    out = {"bytes": a.size, "seconds": round(r["drained_s"], 3), "repl_Bps": round(repl), "tcp_Bps": round(tcp),
           "host_write_Bps": round(r["host"]["bw_bytes"]), "host_done_s": round(r["host_done_s"], 3),
           "bytes_sent": r["bytes_sent"], "after_host_Bps": round((r["bytes_sent"] - r["sent_at_host_done"]) / tail_s)}
    if shaped:
        return {**out, "link_Bps": LINK_1G, "fraction": repl / LINK_1G, "tcp_fraction": tcp / LINK_1G}
    return {**out, "tls_Bps": round(tls), "ratio_tcp": repl / tcp, "ratio_tls": repl / tls}


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, round(p / 100 * (len(v) - 1)))]


def part3(s: Sites, a: argparse.Namespace) -> dict:
    image = paired_volume(s, a, "v", 2 * GIB)
    cmd = fio(image, 2 * GIB, f"--rate={60 * MB}", "--time_based=1", f"--runtime={a.lag_seconds}")
    lags: list[float] = []
    with writer(cmd) as proc:
        nxt = time.monotonic()
        while proc.poll() is None:
            lags.append(status(s)["lag_seconds"])
            nxt += 0.5
            time.sleep(max(0.0, nxt - time.monotonic()))
        out, err = proc.communicate()
        host = parse_job(out, err, proc.returncode, "w")["write"]
    return {"seconds": a.lag_seconds, "samples": len(lags), "p50_s": pct(lags, 50), "p99_s": pct(lags, 99),
            "max_s": max(lags), "mean_s": round(statistics.fmean(lags), 3), "host_write_Bps": round(host["bw_bytes"])}


def part4(s: Sites, a: argparse.Namespace) -> dict:
    s.a.create("u", f"{a.size >> 20}M")  # in no group
    job = run_fio(fio(s.a.image("u"), a.size), "w", 900, stop=functools.partial(stop_fio, grace=20))
    alone = job["write"]["bw_bytes"]
    r = write_and_drain(s, fio(paired_volume(s, a, "v", a.size), a.size))
    paired = r["host"]["bw_bytes"]
    return {"bytes": a.size, "alone_Bps": round(alone), "paired_Bps": round(paired), "ratio": paired / alone,
            "drained_s": round(r["drained_s"], 3)}


def text_file(path: Path, size: int) -> Path:
    """size bytes of log-like lines (lz4 squeezes them a few times); lines are 95..110 bytes."""
    path.write_text("".join(f"2024-05-{i % 28 + 1:02d}T12:{i // 60 % 60:02d}:{i % 60:02d} INFO vstor.io "
                            f"req={i:09d} user=u{i % 97} op={('read', 'write')[i % 2]} path=/v1/items/{i * 7 % 10007} "
                            f"status=200 bytes={i * 13 % 65536}\n" for i in range(size // 90))[:size])
    return path


def part5(s: Sites, a: argparse.Namespace) -> dict:
    src = text_file(Path(s.a.base).parent / "text.log", a.text_size)
    out: dict[str, Any] = {"bytes": a.text_size}
    for mode in ("lz4", "none"):
        image = paired_volume(s, a, f"t{mode}", a.text_size, f"g{mode}", "--compress", mode)
        dd = ["dd", f"if={src}", f"of={image}", "bs=1M", "oflag=direct", "conv=notrunc", "status=none"]
        r = write_and_drain(s, dd, f"g{mode}")
        out[f"{mode}_bytes_sent"], out[f"{mode}_seconds"] = r["bytes_sent"], round(r["drained_s"], 3)
    out["ratio"] = out["lz4_bytes_sent"] / out["none_bytes_sent"]
    return out


# -- reporting and main -----------------------------------------------------------------------------
def mbs(v: float) -> str:
    return f"{v / MB:,.1f} MB/s"


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def render(part: int, r: dict) -> str:
    if part in (1, 2):
        head = (f"  replication: {r['bytes'] / MIB:,.0f} MiB in {r['seconds']:.2f} s = {mbs(r['repl_Bps'])} (host "
                f"fio {mbs(r['host_write_Bps'])}, done at {r['host_done_s']:.2f} s; after it {mbs(r['after_host_Bps'])}"
                f"; {r['bytes_sent']:,} bytes sent)\n  raw TCP {mbs(r['tcp_Bps'])}")
        if part == 1:
            return (f"{head}, TLS {mbs(r['tls_Bps'])}\n"
                    f"  ratio replication / TCP = {r['ratio_tcp']:.3f}   (replication / TLS = {r['ratio_tls']:.3f})")
        return (f"{head} = {r['tcp_fraction']:.3f} of 125 MB/s\n"
                f"  replication / 125 MB/s = {r['fraction']:.3f}   target >= 0.9: {met(r['fraction'] >= 0.9)}")
    if part == 3:
        return (f"  {r['samples']} samples over {r['seconds']} s, host fio {mbs(r['host_write_Bps'])}\n"
                f"  lag_seconds p50 {r['p50_s']:.3f}  p99 {r['p99_s']:.3f}  max {r['max_s']:.3f}  "
                f"mean {r['mean_s']:.3f}   target < 1 s: {met(r['p99_s'] < 1)}")
    if part == 4:
        return (f"  {r['bytes'] / MIB:,.0f} MiB: volume in no group {mbs(r['alone_Bps'])}, volume of the pair "
                f"{mbs(r['paired_Bps'])} (drained at {r['drained_s']:.2f} s)\n"
                f"  ratio paired / unpaired = {r['ratio']:.3f}   target >= 0.9: {met(r['ratio'] >= 0.9)}")
    return (f"  {r['bytes'] / MIB:,.0f} MiB of text: bytes_sent lz4 {r['lz4_bytes_sent']:,} "
            f"({r['lz4_seconds']:.2f} s), none {r['none_bytes_sent']:,} ({r['none_seconds']:.2f} s)\n"
            f"  ratio lz4 / none = {r['ratio']:.3f}")


PARTS: dict[int, tuple[str, str | None, Callable[[Sites, argparse.Namespace], dict]]] = {
    1: ("unshaped link: replication vs raw TCP", None, part12),
    2: ("1gbit link: replication vs 125 MB/s", "1gbit", part12),
    3: ("1gbit link, 60 MB/s of writes: lag", "1gbit", part3),
    4: ("host write throughput, unpaired vs paired", None, part4),
    5: ("bytes on the wire, --compress lz4 vs none", None, part5)}


def run_part(n: int, a: argparse.Namespace, work: Path) -> dict:
    made: list = []
    try:
        s = fresh_sites(work / f"part{n}", made, PARTS[n][1])
        try:
            return PARTS[n][2](s, a)
        except Exception:
            for log in (Path(arr.pool) / "log" / "daemon.log" for arr in (s.a, s.b)):
                tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
                say(f"  {log} (last lines):\n    " + "\n    ".join(tail))
            raise
    finally:
        with signals_deferred():
            teardown(made)
            if not a.keep:  # removed now, its dirty pages need no writeback during the next parts
                shutil.rmtree(work / f"part{n}", ignore_errors=True)


@stdout_checked  # its results are printed after a teardown, which runs vstor in process in threads
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("_sink", "_source"):  # a baseline child process
        net_peer(args[0][1:], args[1], int(args[2]), args[3] if len(args) > 3 else "")
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 GiB fills, 10 s of lag sampling (< 3 min)")
    p.add_argument("--parts", default="1,2,3,4,5", help="comma list of the parts to run")
    p.add_argument("--dir", default="/var/tmp", help="where the temporary directory with the pools goes")
    p.add_argument("--journal-limit", default="8G", help="pair create --journal-limit (default 8G)")
    p.add_argument("--json-out", help="also write the results as JSON to this file")
    p.add_argument("--keep", action="store_true", help="keep the pools and their daemon logs (arrays are stopped)")
    a = p.parse_args(args)
    a.part_list = sorted({int(x) for x in a.parts.split(",") if x.strip()})
    if not set(a.part_list) <= set(PARTS):
        p.error("--parts takes numbers from 1 to 5")
    a.size, a.lag_seconds, a.text_size = (1 if a.quick else 2) * GIB, 10 if a.quick else 20, 256 * MIB
    install_signal_handlers()
    say("$ " + " ".join(sys.orig_argv))
    results: dict[str, Any] = {"quick": a.quick, "journal_limit": a.journal_limit, "cpus": os.cpu_count()}
    errors: dict[str, str] = {}
    work = Path(tempfile.mkdtemp(prefix="vstor-replbench-", dir=a.dir))
    try:
        for n in a.part_list:
            say(f"\npart {n}: {PARTS[n][0]}")
            t = time.monotonic()
            try:
                results[f"part{n}"] = r = run_part(n, a, work)
                say(render(n, r) + f"\n  ({time.monotonic() - t:.0f} s with setup and teardown)")
            except Exception as exc:  # noqa: BLE001 - reported; the next part runs on fresh sites
                where = traceback.extract_tb(exc.__traceback__)[-1]
                errors[f"part{n}"] = f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"
                say(f"  FAILED: {errors[f'part{n}']}")
    except KeyboardInterrupt as exc:
        say(f"\ninterrupted ({str(exc) or 'Ctrl-C'}): the sites were torn down")
        errors["interrupted"] = str(exc) or "Ctrl-C"
    finally:
        with signals_deferred():
            if a.keep:
                say(f"\npools and logs kept in {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    if STATUS_ERRORS:
        say(f"\nwarning: pair status failed {len(STATUS_ERRORS)} times (retried): {sorted(set(STATUS_ERRORS))}")
    if a.json_out:
        doc = {**results, "errors": errors, "status_errors": STATUS_ERRORS}
        Path(a.json_out).write_text(json.dumps(doc, indent=2) + "\n")
    return 130 if "interrupted" in errors else int(bool(errors))


if __name__ == "__main__":
    sys.exit(main())
