"""Named steps that run in turn, where one failing does not stop the others, and a report of
their failures that the status can show and the log does not repeat every second.

The maintenance tick (maintloop.py) is built from them: its commit must go on even while GC
or a checkpoint fails, and a background loop that retries every second must not write the
same error to the log every second. Pure logic: no I/O beyond the logger it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from vstor.errors import VstorError

Step = tuple[str, Callable[[], object]]


def describe(e: BaseException) -> str:
    """A VstorError or OSError speaks for itself; anything else is a bug and names its type."""
    if is_expected(e):
        return str(e) or type(e).__name__
    return f"internal error {type(e).__name__}: {e}"


def is_expected(e: BaseException) -> bool:
    """True for the errors the code raises on purpose (VstorError) or the system gives
    (OSError); anything else is a bug, which deserves its traceback in the log."""
    return isinstance(e, (VstorError, OSError))


class StepsFailed(VstorError):
    """Some steps raised; ``failures`` holds (step name, exception) in the order they ran."""

    def __init__(self, failures: list[tuple[str, Exception]]) -> None:
        self.failures = failures
        super().__init__("; ".join(f"{name}: {describe(e)}" for name, e in failures))


def run_steps(steps: Iterable[Step], halt: Callable[[], bool] = lambda: False) -> None:
    """Run each step in turn until ``halt()`` says to stop; a step that raises any Exception
    does not stop the ones after it. Raises StepsFailed, naming every step that failed, once
    all have had their turn."""
    failures: list[tuple[str, Exception]] = []
    for name, step in steps:
        if halt():
            break
        try:
            step()
        except Exception as e:
            failures.append((name, e))
    if failures:
        raise StepsFailed(failures)


class FailureReport:
    """The current failures of a repeating job, for its status, and log lines only when they
    change.

    ``text`` is ``""`` while the job runs clean, else ``"<step>: <message>"`` for each failing
    step, joined by ``"; "``. A step's failure is logged when it appears or its message
    changes, with the traceback if it is a bug (``is_expected`` is False), and once more when
    the step runs clean again; an unchanged failure is not logged again."""

    def __init__(self, log: logging.Logger, job: str, retry_seconds: float) -> None:
        self.log = log
        self.job = job
        self.retry_seconds = retry_seconds
        self._current: dict[str, str] = {}  # step -> message

    @property
    def text(self) -> str:
        return "; ".join(f"{step}: {msg}" for step, msg in self._current.items())

    def failed(self, error: StepsFailed) -> None:
        now = {name: describe(e) for name, e in error.failures}
        for name, e in error.failures:
            if self._current.get(name) != now[name]:
                self.log.error("%s %s: %s (retrying every %gs)", self.job, name, now[name],
                               self.retry_seconds, exc_info=None if is_expected(e) else e)
        self._recovered(set(self._current) - set(now))
        self._current = now

    def succeeded(self) -> None:
        self._recovered(set(self._current))
        self._current = {}

    def _recovered(self, steps: set[str]) -> None:
        for name in sorted(steps):
            self.log.info("%s %s: recovered from %s", self.job, name, self._current[name])
