"""Backup clients over TLS between two network namespaces, against tar through openssl, in one run.

    .venv/bin/python -m tools.bench_clients [--files 100000] [--size 4G] [--tag vbcl] [--json-out FILE]

Site A (namespace TAG-a, vm/lab.py) runs the array with its client endpoint (--backup-listen),
a tape library (timing model off) and a policy for client c1; site B (TAG-b) is the client.
For each data set (FILES small files of 1-4 KiB in 100 directories; one file of SIZE random
bytes), in the same run:

  baseline   in B: tar cf - DIR | openssl s_client (TLS 1.3, client certificate) to an
             openssl s_server in A writing to /dev/null: the wall time, source bytes / second
  vstor      in B: vstor client push (a full; the policy has --no-verify: no read-back, as the
             baseline has none), the same measure

and then, on the array, the time to restore one file alone from the small-files job on tape
(vstor backup restore JOB --to DIR --files PATH). Targets (issue 24): vstor >= 0.8 of the
baseline for both sets; one file restored in < 10 s. Everything lives in a temporary
directory in /var/tmp and the namespaces are removed at the end, also after an error.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.benchlib.timing import timed
from vm.lab import Lab
from vstor.units import format_size, parse_size

VSTOR = str(Path(sys.executable).parent / "vstor")
PORT, SINK_PORT = 7451, 7452
MiB = 1 << 20


def make_small(root: Path, files: int) -> int:
    rng = random.Random(1)
    total = 0
    for d in range(100):
        (root / f"d{d:03d}").mkdir(parents=True)
    for i in range(files):
        data = rng.randbytes(rng.randrange(1024, 4097))
        (root / f"d{i % 100:03d}" / f"f{i:06d}").write_bytes(data)
        total += len(data)
    return total


def make_big(root: Path, size: int) -> int:
    root.mkdir(parents=True)
    with open(root / "big.bin", "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n
    return size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000, help="small files in the first set (default 100000)")
    ap.add_argument("--size", default="4G", help="the one large file of the second set (default 4G)")
    ap.add_argument("--tag", default="vbcl", help="the namespaces' prefix (default vbcl)")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vstor-bench-clients-", dir="/var/tmp"))
    lab = Lab(a.tag)
    pool, tls, mnt = work / "pool", work / "tls", work / "mnt"
    env = dict(os.environ, VSTOR_POOL=str(pool))
    started = False
    res: dict = {"files": a.files, "size": parse_size(a.size)}

    def v(*args: str) -> str:
        return subprocess.run([VSTOR, *args], env=env, check=True, capture_output=True, text=True).stdout

    def run_timed(cmd: list[str] | str, shell: bool = False) -> float:
        return timed(subprocess.run, cmd, env=env, check=True, capture_output=True, shell=shell,
                     executable="/bin/bash" if shell else None)

    try:
        lab.up()
        A = lab.address("a")  # the array; the client is site b
        v("pki", "init", str(tls))
        for name in ("array", "c1"):
            v("pki", "issue", name, "--dir", str(tls))
        v("pool", "init", str(pool))
        r = subprocess.run(lab.command("a", [VSTOR, "array", "start", "--mount", str(mnt), "--tls-dir", str(tls),
                                             "--name", "array", "--backup-listen", f"{A}:{PORT}"]),
                           env=env, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"the array did not start: {r.stderr.strip()}")
        started = True
        v("library", "create", "lib", "--type", "tape", "--slots", "6", "--drives", "2")
        v("media", "create", "lib", "--range", "VB0001L9-VB0004L9", "--capacity", "200G")
        small, big = work / "src" / "small", work / "src" / "big"
        res["small_bytes"] = make_small(small, a.files)
        res["big_bytes"] = make_big(big, res["size"])
        v("client", "register", "c1", "--paths", str(work / "src"))
        v("backup", "policy", "create", "p", "--source", "client:c1", "--library", "lib",
          "--media", "VB0001L9-VB0004L9", "--no-verify")  # the transfer, as the baseline: no read-back
        subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=False)
        for label, src, nbytes in (("small", small, res["small_bytes"]), ("big", big, res["big_bytes"])):
            count = work / f"sink-{label}.count"
            server = " ".join([
                "openssl", "s_server", "-quiet", "-accept", f"{A}:{SINK_PORT}", "-naccept", "1",
                "-cert", str(tls / "array.pem"), "-key", str(tls / "array.key"), "-CAfile", str(tls / "ca.pem"),
                "-Verify", "1", "-tls1_3"])
            # s_server ends a connection when its own stdin ends: give it a pipe that stays open.
            sink = subprocess.Popen(lab.command("a", ["bash", "-c", f"{server} 2>/dev/null | wc -c > {count}"]),
                                    stdin=subprocess.PIPE)
            time.sleep(1.0)  # s_server listening (a start-up wait, outside the measure)
            client = " ".join(lab.command("b", [
                "openssl", "s_client", "-quiet", "-no_ign_eof", "-nocommands", "-connect", f"{A}:{SINK_PORT}",
                "-cert", str(tls / "c1.pem"), "-key", str(tls / "c1.key"), "-CAfile", str(tls / "ca.pem"),
                "-tls1_3"]))
            base = run_timed(f"set -o pipefail; tar cf - -C {src.parent} {src.name} | {client} >/dev/null 2>&1",
                             shell=True)
            assert sink.stdin is not None
            sink.stdin.close()
            sink.wait(60)
            got = int(count.read_text())
            if got < nbytes:
                raise RuntimeError(f"the TLS sink received {got} bytes of the {nbytes}: the baseline failed")
            t0 = time.perf_counter()
            out = subprocess.run(lab.command("b", [VSTOR, "client", "push", "--array", f"{A}:{PORT}", "--name", "c1",
                                                   "--tls-dir", str(tls), "--json", str(src)]),
                                 env=env, check=True, capture_output=True, text=True).stdout
            ours = time.perf_counter() - t0
            job = json.loads(out)
            res[label] = {"baseline_s": round(base, 2), "vstor_s": round(ours, 2), "job": job["job"],
                          "baseline_mb_s": round(nbytes / 1e6 / base, 1), "vstor_mb_s": round(nbytes / 1e6 / ours, 1),
                          "ratio": round(base / ours, 2)}
            print(f"{label}: tar|openssl {base:.2f} s ({res[label]['baseline_mb_s']} MB/s), vstor push {ours:.2f} s "
                  f"({res[label]['vstor_mb_s']} MB/s): {res[label]['ratio']} of the baseline", flush=True)
        one = sorted((small / "d042").iterdir())[-1]
        subprocess.run(["sync"], check=True)  # the cartridges at rest: the 4 GiB just written is on disk
        t0 = time.perf_counter()
        r1 = json.loads(v("backup", "restore", str(res["small"]["job"]), "--to", str(work / "one"),
                          "--files", str(one), "--json"))
        res["restore_one"] = {"seconds": round(time.perf_counter() - t0, 2), "files": r1["files"],
                              "read_bytes": r1["read_bytes"], "array_seconds": r1["seconds"]}
        assert (work / "one").joinpath(str(one).lstrip("/")).read_bytes() == one.read_bytes()
        print(f"restore one file of {a.files}: {res['restore_one']['seconds']} s (command wall time; "
              f"{r1['seconds']} s in the array), "
              f"{format_size(r1['read_bytes'], True)} read from tape", flush=True)
    finally:
        if started:
            subprocess.run([VSTOR, "array", "stop"], env=env, capture_output=True)
        lab.down()
        shutil.rmtree(work, ignore_errors=True)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
