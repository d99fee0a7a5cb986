"""Errors as one line: for the user on stderr and for the admin in POOL/log/daemon.log.

A failure is reported as one line that names what failed and why. Its traceback, when there
is one, goes to the ``vstor.trace`` logger at debug level: the daemon's log file keeps it for
a bug report, the line above it stays readable.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from vstor.errors import VstorError

TRACE = logging.getLogger("vstor.trace")


def one_line(text: object) -> str:
    """``text`` with its line breaks folded, so it prints as one line."""
    return " ".join(str(text).split())


def describe(e: BaseException) -> str:
    """A VstorError's message as is (it is written for the user); anything else with its type,
    since a bare ``str`` of an unexpected exception is often empty or cryptic."""
    if isinstance(e, VstorError):
        return one_line(e.message)
    text = one_line(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def log_failure(logger: logging.Logger, what: str, e: BaseException, level: int = logging.ERROR) -> None:
    """Log ``what: <error>`` as one line; an unexpected exception's traceback goes to debug."""
    logger.log(level, "%s: %s", what, describe(e))
    if not isinstance(e, VstorError):
        TRACE.debug("traceback of '%s'", what, exc_info=(type(e), e, e.__traceback__))


def install_thread_hook(logger: logging.Logger) -> None:
    """Log an exception that ends a thread as one line, instead of a traceback on stderr."""

    def hook(args: Any) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        name = args.thread.name if args.thread is not None else "?"
        log_failure(logger, f"thread {name} died", args.exc_value)

    threading.excepthook = hook
