"""Crash safety: SIGKILL the daemon at random moments of a write+fsync workload.

After each restart every slot must hold its last fsync-acknowledged version, or a newer
version that was attempted (a write that completed without an fsync may or may not survive,
as on any disk). ``pool check`` must be clean. ``make test`` runs 8 iterations (with seed 11
they cover both fsync modes and kills from 0.12 s to 0.7 s into a run); ``make soak`` runs
200 (VSTOR_CRASH_ITERATIONS).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crash_workload import payload, slot_size
from harness import run

HERE = Path(__file__).parent
SLOTS, SLOT_BYTES = 48, 256 * 1024


def _verify(image: str, log: Path, seed: int) -> int:
    acked: dict[int, int] = {}
    attempted: dict[int, set[int]] = {}
    for line in log.read_text().splitlines():
        kind, s, v = line.split()
        if kind == "K":
            acked[int(s)] = max(acked.get(int(s), 0), int(v))
        else:
            attempted.setdefault(int(s), set()).add(int(v))
    fd = os.open(image, os.O_RDONLY)
    try:
        for s, v in acked.items():
            size = slot_size(seed, s, SLOT_BYTES)
            got = os.pread(fd, size, s * SLOT_BYTES + s % 5)
            ok = {ver for ver in attempted[s] if ver >= v}
            if any(got == payload(seed, s, ver, size) for ver in ok):
                continue
            # A write in flight at the crash may be partly applied, as on a disk; but every
            # 512-byte piece must still come from the acknowledged version or a newer one.
            cands = [payload(seed, s, ver, size) for ver in sorted(ok)]
            first = (-(s * SLOT_BYTES + s % 5)) % 512  # pieces follow the file's sectors
            for off in sorted({0, *range(first, size, 512)}):
                end = off + 512 if off >= first else first
                piece = got[off:end]
                if not any(piece == c[off:end] for c in cands):
                    older = [ver for ver in range(1, v) if piece == payload(seed, s, ver, size)[off:end]]
                    raise AssertionError(f"slot {s}: acknowledged version {v} lost at byte {off} "
                                         f"(candidates {sorted(ok)}; older match {older[-1:] or 'none'}; "
                                         f"zeros {piece.count(0) == len(piece)})")
    finally:
        os.close(fd)
    return len(acked)


def _workload(image: str, log: Path, seed: int, seconds: float, fsync_every: int = 1) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "crash_workload.py"), image, str(log), "--seed", str(seed),
                             "--slots", str(SLOTS), "--slot-bytes", str(SLOT_BYTES), "--seconds", str(seconds),
                             "--fsync-every", str(fsync_every)])


def _crash_loop(arr: object, iterations: int, seed: int, tmp_path: Path) -> None:
    rnd = random.Random(seed)
    log = tmp_path / "acks.log"
    for i in range(iterations):
        wl = _workload(arr.image("v"), log, seed, seconds=5, fsync_every=rnd.choice([1, 1, 4]))
        time.sleep(rnd.uniform(0.05, 0.8))
        arr.kill9()
        wl.wait(timeout=60)
        arr.start()
        st = arr.status()
        assert st["journal"]["failed"] is None
        assert _verify(arr.image("v"), log, seed) > 0 or i == 0
    arr.stop()
    r = arr.vstor("pool", "check", arr.pool, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.root
def test_sigkill_during_fsync_workload(array_factory, tmp_path: Path):
    arr = array_factory("crash", segment_size="16M")
    arr.start()
    arr.create("v", "64M")
    _crash_loop(arr, int(os.environ.get("VSTOR_CRASH_ITERATIONS_FAST", "8")), seed=11, tmp_path=tmp_path)


@pytest.mark.root
def test_sigkill_while_writing_into_reused_segment_files(array_factory, tmp_path: Path):
    """The daemon's new segments start in dead segments' files (vstor/store/backend/spares.py),
    which still hold whole, checksummed records of older versions of the same slots: after each
    kill -9 none of them may come back."""
    from vstor.store.journal.format import SEG_REUSED, SEGMENT_HEADER_SIZE, segment_flags
    from vstor.store.store import Store

    arr = array_factory("reuse", segment_size="16M")
    arr.start()
    arr.create("v", "64M")
    arr.stop()
    st = Store.open(arr.pool)  # the array is stopped: fill the spares with old versions of every slot
    vid = st.volume("v").id
    rnd = random.Random(3)
    for _ in range(2):
        for off in range(0, 64 << 20, 1 << 20):
            st.write(vid, off, rnd.randbytes(1 << 20))
    st.checkpoint()
    st.checkpoint()
    spare_dir = Path(arr.pool) / "journal" / "spare"
    assert len(list(spare_dir.iterdir())) == 2
    st.close()
    arr.start()
    _crash_loop(arr, 4, seed=13, tmp_path=tmp_path)
    def header(path: Path) -> bytes:
        with open(path, "rb") as f:
            return f.read(SEGMENT_HEADER_SIZE)

    reused = [p for p in (Path(arr.pool) / "journal").glob("*.seg") if segment_flags(header(p)) & SEG_REUSED]
    assert reused, "no segment was started in a spare file"


@pytest.mark.root
@pytest.mark.soak
def test_sigkill_soak(array_factory, tmp_path: Path):
    arr = array_factory("soak", segment_size="16M", compress="lz4")
    arr.start()
    arr.create("v", "64M")
    _crash_loop(arr, int(os.environ.get("VSTOR_CRASH_ITERATIONS", "200")), seed=23, tmp_path=tmp_path)


@pytest.mark.root
def test_torn_record_is_cut_and_acked_data_survives(array_factory, tmp_path: Path):
    """The daemon dies half-way through writing a record (fault point journal.write=torn)."""
    arr = array_factory("torn", segment_size="16M")
    arr.start()
    arr.create("v", "64M")
    arr.stop()
    arr.start(env=dict(arr.env, VSTOR_FAULTS="journal.write=torn@40"))
    log = tmp_path / "acks.log"
    wl = _workload(arr.image("v"), log, 5, seconds=20)
    assert wl.wait(timeout=60) == 0
    arr.kill9()  # the daemon killed itself; this clears the lock holder if it lingers
    arr.start()
    torn = arr.status()["recovery"]["torn_tail"]
    assert torn is not None and torn["offset"] > 0, torn
    assert _verify(arr.image("v"), log, 5) > 0
    arr.stop()
    assert run([sys.executable, "-m", "vstor.cli.main", "pool", "check", arr.pool], check=False).returncode == 0
