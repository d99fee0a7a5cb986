"""The benchmarks' line on how idle vCPUs wait (tools/benchlib/vcpu.py), on stand-in sysfs files."""

from __future__ import annotations

from pathlib import Path

from tools.benchlib.vcpu import idle_polling


def _sysfs(tmp_path: Path, driver: str | None, ns: str | None) -> tuple[Path, Path]:
    cpuidle, haltpoll = tmp_path / "cpuidle", tmp_path / "haltpoll"
    cpuidle.mkdir(parents=True)
    haltpoll.mkdir(parents=True)
    if driver is not None:
        (cpuidle / "current_driver").write_text(driver + "\n")
    if ns is not None:
        (haltpoll / "guest_halt_poll_ns").write_text(ns + "\n")
    return cpuidle, haltpoll


def test_a_haltpoll_guest_that_never_polls_says_so(tmp_path: Path) -> None:
    line = idle_polling(*_sysfs(tmp_path, "haltpoll", "0"))
    assert line.startswith("vCPU idle: haltpoll, guest_halt_poll_ns 0 (never polls before it halts;")


def test_a_polling_guest_says_for_how_long(tmp_path: Path) -> None:
    line = idle_polling(*_sysfs(tmp_path, "haltpoll", "200000"))
    assert "guest_halt_poll_ns 200000 (polls up to 200 us before it halts;" in line


def test_other_drivers_and_missing_files(tmp_path: Path) -> None:
    assert idle_polling(*_sysfs(tmp_path / "a", "intel_idle", "0")) == \
        "vCPU idle: cpuidle driver intel_idle (no guest halt polling)"
    assert "no cpuidle driver" in idle_polling(*_sysfs(tmp_path / "b", None, None))
    assert "unreadable" in idle_polling(*_sysfs(tmp_path / "c", "haltpoll", None))
