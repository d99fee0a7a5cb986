"""``make demo``: an array on a local pool, end to end, then everything cleaned up.

Creates a pool in a temporary directory, starts the array, creates two volumes, attaches
one, makes ext4 on it, mounts it, writes and reads back files, puts both volumes in a
consistency group and snapshots it, trims, reads the deleted file back from the snapshot,
backs the group up to tape (full and incremental) and restores it, runs a restore drill,
exports the restored volume over NBD and compares it with qemu-img, has a backup client push
files over mutual TLS and restores one of them alone, prints the backup report, the audit
check, status and stats, then unmounts, detaches, stops the array and checks the pool.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

BIN = os.path.dirname(sys.executable)
VSTOR = os.path.join(BIN, "vstor")


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def sh(*cmd: str, env: dict | None = None, show: bool = True) -> str:
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if show and r.stdout.strip():
        print(r.stdout.rstrip())
    if r.returncode:
        print(r.stderr.rstrip(), file=sys.stderr)
        raise SystemExit(f"demo: '{' '.join(cmd)}' failed with exit {r.returncode}")
    return r.stdout


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> int:
    argparse.ArgumentParser(prog="demo.py", description=__doc__.splitlines()[0].strip("`")).parse_args()
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (it uses FUSE, loop devices and mount)")
    base = tempfile.mkdtemp(prefix="vstor-demo-")
    pool, mnt, fs, snapfs = f"{base}/pool", f"{base}/array", f"{base}/fs", f"{base}/snapfs"
    env = dict(os.environ, VSTOR_POOL=pool)
    started = mounted = snap_mounted = False
    device = snap_device = ""
    try:
        step("create a pool, certificates, and start the array (NBD and backup-client endpoints on loopback)")
        sh(VSTOR, "pool", "init", pool, "--compress", "lz4", env=env)
        tls, nbd_port, client_port = f"{base}/tls", _free_port(), _free_port()
        sh(VSTOR, "pki", "init", tls, env=env)
        for name in ("array", "web1"):
            sh(VSTOR, "pki", "issue", name, "--dir", tls, env=env)
        sh(VSTOR, "array", "start", "--mount", mnt, "--tls-dir", tls, "--name", "array",
           "--nbd", f"127.0.0.1:{nbd_port}", "--backup-listen", f"127.0.0.1:{client_port}", env=env)
        started = True
        step("create two thin volumes")
        sh(VSTOR, "volume", "create", "orders", "--size", "2G", env=env)
        sh(VSTOR, "volume", "create", "payments", "--size", "1G", env=env)
        sh(VSTOR, "volume", "list", env=env)
        step("attach 'orders' to a loop device, make ext4 and mount it")
        device = sh(VSTOR, "volume", "attach", "orders", env=env, show=False).strip()
        print(device)
        sh("mkfs.ext4", "-q", "-E", "nodiscard", device)
        os.makedirs(fs, exist_ok=True)
        sh("mount", device, fs)
        mounted = True
        step("write files, sync, and read them back")
        t0 = time.monotonic()
        with open(f"{fs}/random.bin", "wb") as f:
            for _ in range(64):
                f.write(os.urandom(1 << 20))
        for i in range(200):
            with open(f"{fs}/small-{i:03d}.txt", "w") as f:
                f.write(f"order {i}\n" * (i + 1))
        os.sync()
        written = sha256(f"{fs}/random.bin")
        print(f"wrote 64 MiB + 200 small files in {time.monotonic() - t0:.2f}s, sha256 {written[:16]}...")
        sh("umount", fs)
        mounted = False
        sh("mount", device, fs)
        mounted = True
        assert sha256(f"{fs}/random.bin") == written, "read-back mismatch"
        assert open(f"{fs}/small-199.txt").read() == "order 199\n" * 200
        print("read back after remount: contents identical")
        step("group both volumes and take a group snapshot (ext4 frozen for a clean cut)")
        sh(VSTOR, "group", "create", "db", "--volumes", "orders,payments", env=env)
        sh(VSTOR, "snapshot", "create", "db", "--name", "before-cleanup", "--freeze", fs, env=env)
        step("delete a file and trim: the live volume frees the space, the snapshot keeps it")
        before = _allocated(env)
        os.remove(f"{fs}/random.bin")
        os.sync()  # ext4 frees the blocks at its next journal commit; fstrim skips them before
        sh("fstrim", "-v", fs)
        print(f"volume 'orders' allocated: {before / 2**20:.1f} MiB -> {_allocated(env) / 2**20:.1f} MiB")
        step("attach the snapshot read-only: the deleted file is still there")
        snap_device = sh(VSTOR, "volume", "attach", "--snapshot", "db/before-cleanup/orders", env=env,
                         show=False).strip()
        os.makedirs(snapfs, exist_ok=True)
        sh("mount", "-o", "ro", snap_device, snapfs)
        snap_mounted = True
        assert sha256(f"{snapfs}/random.bin") == written, "snapshot content mismatch"
        print(f"{snapfs}/random.bin from the snapshot: sha256 {written[:16]}..., identical")
        sh("umount", snapfs)
        snap_mounted = False
        sh(VSTOR, "volume", "detach", "--snapshot", "db/before-cleanup/orders", env=env)
        snap_device = ""
        sh(VSTOR, "snapshot", "list", "db", env=env)
        step("back up the group to tape: a full, then an incremental, each read back (verify)")
        sh(VSTOR, "library", "create", "lib", "--type", "tape", "--slots", "6", "--drives", "2", env=env)
        sh(VSTOR, "media", "create", "lib", "--range", "VT0001L9-VT0004L9", "--capacity", "1G", env=env)
        sh(VSTOR, "backup", "policy", "create", "nightly", "--source", "db", "--library", "lib",
           "--media", "VT0001L9-VT0004L9", "--schedule", "0 2 * * *", "--level", "incremental",
           "--full-every", "7d", "--retention", "30d", env=env)
        sh(VSTOR, "backup", "run", "nightly", "--wait", env=env)
        with open(f"{fs}/after-backup.txt", "w") as f:
            f.write("written after the full backup\n" * 1000)
        os.sync()
        inc = json.loads(sh(VSTOR, "backup", "run", "nightly", "--wait", "--json", env=env, show=False))
        print(f"job {inc['id']} ({inc['level']}): {inc['bytes']} bytes, verify {inc['verify']}")
        sh(VSTOR, "backup", "jobs", env=env)
        step("restore the incremental's chain to new volumes; it equals the snapshot it was taken from")
        sh(VSTOR, "backup", "restore", str(inc["id"]), "--to", "restored", env=env)
        for vol in ("orders", "payments"):
            want = sha256(f"{mnt}/snapshots/db/{inc['snapshot']}/{vol}")
            assert sha256(f"{mnt}/volumes/restored-{vol}") == want, f"restore of {vol} differs"
        print("restored-orders and restored-payments equal the backed-up snapshot, byte for byte")
        step("a restore drill: restore the latest chain to scratch, check it in its own namespace, clean up")
        check = f"{base}/drill-check"
        with open(check, "w") as f:
            f.write('#!/bin/sh\nif [ -n "$VSTOR_DRILL_MOUNT" ]; then echo "$VSTOR_DRILL_VOLUME: ext4, '
                    '$(ls "$VSTOR_DRILL_MOUNT" | wc -l) entries"; else echo "$VSTOR_DRILL_VOLUME: '
                    '$(blockdev --getsize64 "$VSTOR_DRILL_DEVICE") bytes"; fi\n')
        os.chmod(check, 0o755)
        sh(VSTOR, "backup", "drill", "nightly", "--check", check, "--now", env=env)
        step("export the restored volume over NBD (read-only); qemu-img compares it with the image file")
        sh(VSTOR, "volume", "export", "restored-orders", "--read-only", env=env)
        sh("qemu-img", "compare", "-f", "raw", "-F", "raw", f"nbd://127.0.0.1:{nbd_port}/restored-orders",
           f"{mnt}/volumes/restored-orders")
        sh(VSTOR, "volume", "exports", env=env)
        sh(VSTOR, "volume", "unexport", "restored-orders", env=env)
        step("a backup client pushes files over mutual TLS; one file is restored alone")
        src = f"{base}/web1-srv"
        os.makedirs(f"{src}/conf", exist_ok=True)
        for i in range(200):
            with open(f"{src}/conf/site{i}.conf", "w") as f:
                f.write(f"server {i}\n" * (i + 1))
        os.symlink("conf/site7.conf", f"{src}/current")
        sh(VSTOR, "media", "create", "lib", "--range", "VT0005L9-VT0006L9", "--capacity", "1G", env=env)
        sh(VSTOR, "client", "register", "web1", "--paths", src, "--quota", "1G", env=env)
        sh(VSTOR, "backup", "policy", "create", "web", "--source", "client:web1", "--library", "lib",
           "--media", "VT0005L9-VT0006L9", "--level", "incremental", env=env)
        push = json.loads(sh(VSTOR, "client", "push", "--array", f"127.0.0.1:{client_port}", "--name", "web1",
                             "--tls-dir", tls, src, "--json", env=env, show=False))
        print(f"job {push['job']} ({push['level']}): {push['status']}")
        sh(VSTOR, "backup", "files", str(push["job"]), "--glob", "*/site7.conf", env=env)
        sh(VSTOR, "backup", "restore", str(push["job"]), "--to", f"{base}/web1-back", "--files", "*/site7.conf",
           env=env)
        with open(f"{base}/web1-back{src}/conf/site7.conf") as a, open(f"{src}/conf/site7.conf") as b:
            assert a.read() == b.read(), "the restored file differs"
        print("site7.conf restored alone, identical")
        sh(VSTOR, "backup", "report", env=env)
        sh(VSTOR, "audit", "verify", env=env)
        step("status at a glance, the daemon's view, and the stats file")
        sh(VSTOR, "status", env=env)
        sh(VSTOR, "array", "status", env=env)
        print(open(f"{mnt}/stats").read().rstrip())
        step("unmount, detach, stop, check")
        sh("umount", fs)
        mounted = False
        sh(VSTOR, "volume", "detach", "orders", env=env)
        device = ""
        sh(VSTOR, "array", "stop", env=env)
        started = False
        sh(VSTOR, "pool", "check", pool, env=env)
        print("\ndemo finished: everything worked and was cleaned up")
        return 0
    finally:
        if snap_mounted:
            subprocess.run(["umount", "-l", snapfs], capture_output=True)
        if snap_device:
            subprocess.run(["losetup", "-d", snap_device], capture_output=True)
        if mounted:
            subprocess.run(["umount", "-l", fs], capture_output=True)
        if device:
            subprocess.run(["losetup", "-d", device], capture_output=True)
        if started:
            r = subprocess.run([VSTOR, "array", "stop"], capture_output=True, env=env)
            if r.returncode:
                subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _allocated(env: dict) -> int:
    import json

    out = subprocess.run([VSTOR, "volume", "show", "orders", "--json"], capture_output=True, text=True, env=env)
    return json.loads(out.stdout)["allocated"]


if __name__ == "__main__":
    sys.exit(main())
