"""Restore drills in process, on the injected clock: a real ext4 image backed up to emulated tape,
restored to a scratch volume, checked (e2fsck -fn, or a script) in its own network namespace,
recorded and cleaned up; a crash mid-drill cleaned up at the next start; the drill report's
figures against known inputs. The drill through the real daemon (FUSE + losetup) is in
test_backup_drills_fuse.py."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import zlib

import pytest
from poolkit import MiB, make_pool
from pyroute2 import netns

from vstor.backup import _catalog_schema
from vstor.backup.catalog import BackupCatalog
from vstor.backup.drill.check import netns_exists
from vstor.backup.drill.report import drill_report, fit_forecast, plot_drills, render_drills
from vstor.backup.engine import BackupEngine
from vstor.clock import ManualClock
from vstor.errors import Busy
from vstor.faults import Faults
from vstor.media.manager import MediaManager
from vstor.store.store import Store

root = pytest.mark.root  # the check's network namespace needs CAP_SYS_ADMIN

DAY = 86400.0
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC, ManualClock's start


class DrillLab:
    """A pool with an ext4 volume "fs", a tape library, a policy "p" with one done job."""

    def __init__(self, tmp_path, faults: str = "", make: bool = True) -> None:
        self.tmp = tmp_path
        self.pool = str(tmp_path / "pool") if not make else make_pool(tmp_path)
        self.clock = ManualClock()
        self.store = Store.open(self.pool, None, clock=self.clock)
        self.media = MediaManager(self.pool, self.store.media_key)
        self.faults = Faults(faults)
        if make:
            self.media.create_library("lib", "tape", 4, 1, 1)
            self.media.create_media("lib", ["VT0001L9", "VT0002L9"], capacity=64 * MiB)
            img = tmp_path / "fs.img"
            with open(img, "wb") as f:
                f.truncate(16 * MiB)
            subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(img)], check=True)
            vid = self.store.create_volume("fs", 16 * MiB).id
            data = img.read_bytes()
            for off in range(0, len(data), MiB):
                if data[off:off + MiB].count(0) != MiB:
                    self.store.write(vid, off, data[off:off + MiB])
        self.engine = BackupEngine(self.store, self.media, clock=self.clock, faults=self.faults)
        if make:
            self.engine.create_policy(name="p", source="fs", library="lib", media=["VT0001L9", "VT0002L9"],
                                      verify=False)
            assert self.engine.run("p", None)["status"] == "done"

    @property
    def drills(self):
        return self.engine.drills

    def scratch_left(self, drill: dict) -> list[str]:
        s = drill["scratch"]
        left = [v.name for v in self.store.volumes() if v.name.startswith("vstor-drill-")]
        if netns_exists(s["netns"]):
            left.append(s["netns"])
        if os.path.exists(s["dir"]):
            left.append(s["dir"])
        return left

    def close(self) -> None:
        self.engine.close()
        self.media.close()
        self.store.close()
        tag = f"vstor-drill-{zlib.crc32(os.path.abspath(self.pool).encode()):08x}-"
        for name in netns.listnetns():  # a failed test's leftovers: this pool's drills' namespaces only
            if name.startswith(tag):
                netns.remove(name)


@pytest.fixture
def lab(tmp_path):
    lab = DrillLab(tmp_path)
    yield lab
    lab.close()


def script(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


@root
def test_scheduled_drill_fires_runs_once_and_the_report_shows_it(lab):
    lab.drills.define("p", "0 4 * * *", None, None)  # daily at 04:00 UTC
    assert lab.engine.tick() == []
    lab.clock.advance(DAY)
    lines = lab.engine.tick()
    assert any(line.startswith("drill p: started") for line in lines), lines
    lab.drills.join()
    (d,) = lab.drills.records.drills("p")
    assert d["status"] == "passed", d
    assert d["check"] == "e2fsck -fn" and d["exit_code"] == 0 and d["job"] == 1 and d["bytes"] > 0
    assert "vstor-drill-1.img: " in d["output"] and "files (" in d["output"], d["output"]  # e2fsck summary
    assert lab.scratch_left(d) == []
    assert lab.engine.tick() == []  # fired once
    lab.clock.advance(5 * DAY)  # five runs missed: one is taken
    assert sum(line.startswith("drill p: started") for line in lab.engine.tick()) == 1
    lab.drills.join()
    assert [x["status"] for x in lab.drills.records.drills("p")] == ["passed", "passed"]
    rep = drill_report(lab.drills.records.drills(), {"p": d["bytes"]}, lab.clock.time(), 30)
    p = rep["policies"]["p"]
    assert (p["drills"], p["passed"], p["pass_rate"], p["last"]["status"]) == (2, 2, 1.0, "passed")
    assert p["forecast"]["method"] == "throughput" and p["forecast"]["points"] == 2
    assert "Restore drills" in render_drills(rep)
    # the restores table has them too: drills count as measured restores
    assert {r["target"] for r in lab.engine.catalog.restores()} == {"vstor-drill-1", "vstor-drill-2"}
    # deleting the policy takes its drill definition with it (it could only fail); the history stays
    lab.engine.delete_policy("p")
    assert lab.drills.records.definitions() == [] and len(lab.drills.records.drills("p")) == 2
    lab.clock.advance(DAY)
    assert lab.engine.tick() == []


@root
def test_failing_check_is_recorded_with_its_output_isolated_and_scratch_removed(lab, tmp_path):
    check = script(tmp_path, "check.sh", """\
        echo "device=$VSTOR_DRILL_DEVICE job=$VSTOR_DRILL_JOB mount=${VSTOR_DRILL_MOUNT:-none}"
        awk -F: 'NR > 2 { gsub(/ /, "", $1); print $1 }' /proc/net/dev
        head -c 1024 "$VSTOR_DRILL_DEVICE" > /dev/null || exit 9
        exit 3
        """)
    out = lab.drills.define("p", None, check, 60)
    assert out["check"] == check and out["schedule"] is None
    d = lab.drills.run("p")
    assert d["status"] == "failed" and d["exit_code"] == 3, d
    assert "exited 3" in d["reason"]
    lines = d["output"].split("\n")
    assert lines[0].startswith("device=") and "job=1 mount=none" in lines[0], d["output"]
    assert lines[1:] == ["lo", ""], d["output"]  # its own namespace: loopback only
    assert lab.scratch_left(d) == []
    # the definition was audited; a timeout kills the check and fails the drill
    assert [e["action"] for e in lab.engine.audit.entries()][-1] == "backup.drill.define"
    lab.drills.define("p", None, script(tmp_path, "slow.sh", "sleep 30\n"), 0.3)
    d = lab.drills.run("p")
    assert d["status"] == "failed" and "did not end within" in d["reason"] and d["exit_code"] is None, d
    assert d["check_s"] < 5 and lab.scratch_left(d) == []


@root
def test_a_drill_and_a_job_of_one_policy_never_overlap(lab, tmp_path):
    gate = tmp_path / "go"
    lab.drills.define("p", None, script(tmp_path, "wait.sh", f"""\
        i=0; while [ ! -e {gate} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
        """), 60)
    lab.drills.start("p")
    with pytest.raises(Busy, match="restore drill of policy 'p' is running"):
        lab.engine.run("p", None)
    with pytest.raises(Busy, match="drills run one at a time"):
        lab.drills.run("p")
    gate.touch()
    lab.drills.join()
    assert lab.drills.records.drills("p")[0]["status"] == "passed"
    job, _ = lab.engine._prepare("p", None)  # a job in progress: no drill of its policy
    with pytest.raises(Busy, match="backup job of policy 'p' is running"):
        lab.drills.run("p")


CRASH = """
import sys
from vstor.backup.engine import BackupEngine
from vstor.clock import ManualClock
from vstor.faults import Faults
from vstor.media.manager import MediaManager
from vstor.store.store import Store
store = Store.open(sys.argv[1], None, clock=ManualClock())
engine = BackupEngine(store, MediaManager(sys.argv[1], store.media_key), clock=store.clock,
                      faults=Faults("drill.check=kill"))
engine.drills.run("p")
"""


@root
def test_a_drill_killed_mid_check_is_failed_and_cleaned_up_at_the_next_start(tmp_path):
    lab = DrillLab(tmp_path)
    pool = lab.pool
    lab.close()
    try:
        crash_then_restart(pool, tmp_path)
    finally:
        DrillLab(tmp_path, make=False).close()  # removes this pool's namespaces whatever happened


def crash_then_restart(pool: str, tmp_path) -> None:
    r = subprocess.run([sys.executable, "-c", CRASH, pool], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)), timeout=60)
    assert r.returncode == -9, r.stderr
    db = sqlite3.connect(os.path.join(pool, "backup", "catalog.db"))
    status, scratch = db.execute("SELECT status, scratch FROM drills").fetchone()
    db.close()
    assert status == "running" and '"vstor-drill-1"' in scratch  # the crash left it all behind
    left = json.loads(scratch)
    assert netns_exists(left["netns"]) and os.path.exists(os.path.join(left["dir"], "vstor-drill-1.img"))
    lab = DrillLab(tmp_path, make=False)
    try:
        (d,) = lab.drills.records.drills()
        assert d["status"] == "failed" and d["reason"].startswith("interrupted"), d
        assert d["scratch"]["volumes"] == ["vstor-drill-1"] and lab.scratch_left(d) == []
        assert lab.drills.run("p")["status"] == "passed"  # and the next one works
    finally:
        lab.close()


def test_a_version_1_catalog_is_migrated(tmp_path):
    path = str(tmp_path / "catalog.db")
    db = sqlite3.connect(path)
    db.executescript(_catalog_schema.SCHEMA + "PRAGMA user_version=1;")
    db.execute("INSERT INTO policies VALUES ('old', '{}', 1, 1)")
    db.commit()
    db.close()
    cat = BackupCatalog(path, ManualClock())
    try:
        assert [p["name"] for p in cat.policies()] == ["old"]
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == _catalog_schema.VERSION
            assert db.execute("SELECT COUNT(*) FROM drills").fetchone()[0] == 0
    finally:
        cat.close()


def _d(i: int, day: float, status: str, restore: float, nbytes: int, policy: str = "p") -> dict:
    t = T0 + day * DAY
    return {"id": i, "policy": policy, "status": status, "started": t, "ended": t + restore + 1, "reason": "",
            "restore_s": restore, "check_s": 1.0, "bytes": nbytes}


def test_drill_report_figures_and_trends_from_known_inputs():
    g = 10**9
    ds = [_d(1, -20, "passed", 10.0, g), _d(2, -13, "failed", 12.0, g), _d(3, -6, "passed", 14.0, g),
          _d(4, -6, "passed", 16.0, g), _d(5, 0, "running", 0.0, 0), _d(6, -1, "passed", 5.0, g, policy="q")]
    rep = drill_report(ds, {"p": 2 * g}, T0, days=28)
    p = rep["policies"]["p"]
    assert (p["drills"], p["passed"], p["failed"]) == (4, 3, 1) and p["pass_rate"] == 0.75
    assert p["restore_avg_s"] == pytest.approx(40 / 3) and p["restore_p95_s"] == 16.0
    assert p["last"]["id"] == 4  # the running drill 5 is not finished
    # passed restore times over days -20, -6, -6: 10, 14, 16 -> OLS slope 5/14 s per day
    assert p["restore_trend_s_per_day"] == pytest.approx(5 / 14)
    assert p["forecast"] == {"seconds": pytest.approx(2 * 40 / 3), "bytes": 2 * g, "method": "throughput",
                             "points": 3}
    assert rep["overall"]["drills"] == 5 and rep["policies"]["q"]["forecast"] is None  # q: no size known
    assert len(rep["daily"]) == 28 and sum(x["drills"] for x in rep["daily"]) == 5
    weeks = {w["week"]: w for w in rep["weekly"] if w["drills"]}
    # T0 is a Tuesday (2023-11-14): day -20 -> week of 10-23, -13 -> 10-30, -6 -> 11-06, -1 -> 11-13
    assert [(w, x["drills"], x["failed"]) for w, x in weeks.items()] == [
        ("2023-10-23", 1, 0), ("2023-10-30", 1, 1), ("2023-11-06", 2, 0), ("2023-11-13", 1, 0)]
    assert weeks["2023-10-30"]["failure_rate"] == 1.0 and weeks["2023-11-06"]["restore_avg_s"] == 15.0
    text = render_drills(rep)
    assert "75%" in text and "~27s" in text and "throughput fit over 3 drills" in text


def test_drill_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    rep = drill_report([_d(1, -1, "passed", 10.0, 10**9), _d(2, 0, "failed", 12.0, 10**9)], {}, T0, days=7)
    plot_drills(rep, str(tmp_path / "d.png"))
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_forecast_fits_bytes_and_date():
    g = 10**9

    def truth(nbytes: float, day: float) -> float:
        return 3.0 + 20.0 * nbytes / g + 0.5 * day

    pts = [(1 * g, 0), (2 * g, 1), (2 * g, 10), (4 * g, 3), (3 * g, 20)]
    ds = [_d(i, day, "passed", truth(b, day), b) for i, (b, day) in enumerate(pts)]
    f = fit_forecast(ds, 5 * g, T0 + 30 * DAY)
    assert f["method"] == "bytes+date" and f["seconds"] == pytest.approx(truth(5 * g, 30))
    # sizes and dates that move together: the date drops out of the fit
    ds = [_d(i, i, "passed", 10.0 + 5 * i, (i + 1) * g) for i in range(5)]
    f = fit_forecast(ds, 10 * g, T0 + 40 * DAY)
    assert f["method"] == "bytes" and f["seconds"] == pytest.approx(10.0 + 5 * 9)


@root
def test_a_client_policy_drill_restores_into_a_directory_through_the_hook(lab, tmp_path):
    """The clients' restore-to-directory plugs in at ``dir_restorers["client"]``; here a stand-in
    that lays down a small tree, so the dispatch, the check in the tree and the clean-up are real."""
    cat = lab.engine.catalog
    cat.put_policy(cat.policy("p") | {"name": "c", "source": "client:web"})
    job = cat.new_job("c", "full", "client:web", None, None, T0 + 30 * DAY)
    cat.set_job(job, status="done", bytes=6)
    d = lab.drills.run("c")  # the engine wires the clients' restore: this hand-made job holds no files
    assert d["status"] == "failed" and "holds no files" in d["reason"], d
    del lab.drills.dir_restorers["client"]
    d = lab.drills.run("c")
    assert d["status"] == "failed" and "cannot restore it to a directory" in d["reason"], d
    seen = []

    def restore_tree(job_id: int, target: str) -> dict:
        seen.append(os.path.dirname(target))
        os.makedirs(os.path.join(target, "etc"))
        with open(os.path.join(target, "etc", "hostname"), "w") as f:
            f.write("web-1\n")
        return {"bytes": 6, "seconds": 0.5}

    lab.drills.dir_restorers["client"] = restore_tree
    lab.drills.define("c", None, script(tmp_path, "tree.sh", """\
        test "$(cat etc/hostname)" = web-1 && test "$PWD" = "$VSTOR_DRILL_DIR" || exit 1
        echo "tree ok for job $VSTOR_DRILL_JOB"
        """), 30)
    d = lab.drills.run("c")
    assert d["status"] == "passed" and d["kind"] == "client" and d["output"] == f"tree ok for job {job}\n", d
    assert (d["bytes"], d["restore_s"]) == (6, 0.5) and seen == [d["scratch"]["dir"]]
    assert not os.path.exists(d["scratch"]["dir"]) and not netns_exists(d["scratch"]["netns"])
    lab.drills.remove("c")  # no definition: the default check, which for a tree reads every file
    d = lab.drills.run("c")
    assert d["status"] == "passed" and d["check"] == "read every file", d


@root
def test_stopping_the_array_mid_check_kills_the_check_and_removes_the_scratch(lab, tmp_path):
    lab.drills.define("p", None, script(tmp_path, "hang.sh", "echo started\nexec sleep 60\n"), 120)
    lab.drills.start("p")
    for _ in range(400):  # until the check runs: its namespace exists and its first line is out
        ds = lab.drills.records.drills("p")
        if ds and ds[0]["scratch"].get("netns") and netns_exists(ds[0]["scratch"]["netns"]):
            break
        threading.Event().wait(0.025)
    else:
        pytest.fail("the drill's check did not start within 10 s")
    lab.engine.close()  # what the daemon does on SIGTERM
    db = sqlite3.connect(os.path.join(lab.pool, "backup", "catalog.db"))
    status, reason, scratch = db.execute("SELECT status, reason, scratch FROM drills").fetchone()
    db.close()
    assert status == "failed" and "the array is stopping" in reason, reason
    assert lab.scratch_left({"scratch": json.loads(scratch)}) == []
