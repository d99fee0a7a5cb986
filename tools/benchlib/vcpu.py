"""How this machine's idle vCPUs wait, named in the benchmarks' headers.

On a KVM guest with the ``cpuidle-haltpoll`` driver, an idle vCPU polls for up to
``guest_halt_poll_ns`` before it halts, and waking a halted vCPU is a trip through the
hypervisor. A host that sends one small request at a time pays that on every request, on
both sides of it (the client's vCPU and the server's): on the development VM
(``guest_halt_poll_ns`` 0) vstor's 4 KiB random writes through FUSE ran at 0.58 of the
passthrough's, and at 0.69 with the kernel's default of 200000 (docs/benchmarks.md §1, run
F13). So each figure names the setting it was taken under. Reading only: the tools never change it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CPUIDLE", "HALTPOLL", "KERNEL_DEFAULT_NS", "idle_polling"]

CPUIDLE = Path("/sys/devices/system/cpu/cpuidle")
HALTPOLL = Path("/sys/module/haltpoll/parameters")
# guest_halt_poll_ns unless set: the haltpoll governor's default (drivers/cpuidle/governors/haltpoll.c)
KERNEL_DEFAULT_NS = 200_000


def idle_polling(cpuidle: Path = CPUIDLE, haltpoll: Path = HALTPOLL) -> str:
    """One line: the cpuidle driver and, for haltpoll, how long an idle vCPU polls first."""
    driver = _read(cpuidle / "current_driver")
    if driver is None:
        return "vCPU idle: no cpuidle driver (the default idle loop halts at once)"
    if driver != "haltpoll":
        return f"vCPU idle: cpuidle driver {driver} (no guest halt polling)"
    ns = _read(haltpoll / "guest_halt_poll_ns")
    if ns is None or not ns.isdigit():
        return "vCPU idle: haltpoll, guest_halt_poll_ns unreadable"
    what = "never polls before it halts" if ns == "0" else f"polls up to {int(ns) / 1000:g} us before it halts"
    return f"vCPU idle: haltpoll, guest_halt_poll_ns {ns} ({what}; the kernel's default is {KERNEL_DEFAULT_NS})"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
