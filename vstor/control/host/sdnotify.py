"""systemd's readiness protocol (sd_notify) and the daemon's log format under systemd.

sd_notify: the service manager passes the path of a datagram socket in ``NOTIFY_SOCKET``; the
service sends newline-separated ``KEY=VALUE`` assignments to it, one datagram per message
(``READY=1``, ``STOPPING=1``, ``STATUS=...``, ``MAINPID=...``). A name starting with ``@`` is
a Linux abstract socket (the ``@`` stands for a leading NUL byte). Without ``NOTIFY_SOCKET``
(not run by systemd, or by a unit that is not ``Type=notify``) nothing is sent. A failure to
send is never fatal: the daemon serves either way, and systemd reports the missing READY.

Journald: a service's stderr goes to the journal, which stamps each line with the time and
the PID, so under systemd the daemon writes its log lines to stderr without them, with the
``<N>`` syslog priority prefix journald reads (``SyslogLevelPrefix=`` is on by default).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping

JOURNAL_FORMAT = "%(name)s %(levelname)s %(message)s"

_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (like "READY=1\\nSTATUS=serving") to $NOTIFY_SOCKET; False if there is
    none or it cannot be reached."""
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":  # unset, or a vsock address: not supported
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), address)
        return True
    except OSError:
        return False


def under_systemd(env: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """Run by systemd as a service, with ``fd`` going where systemd sent it. JOURNAL_STREAM
    ("DEV:INODE" of the journal's stream) must name ``fd`` itself: a daemon forked by ``vstor
    array start`` from a service inherits the variable but writes to log/daemon.out; without
    JOURNAL_STREAM (output not to the journal), INVOCATION_ID tells a service."""
    env = os.environ if env is None else env
    stream = env.get("JOURNAL_STREAM")
    if stream:
        try:
            st = os.fstat(fd)
        except OSError:
            return False
        return stream == f"{st.st_dev}:{st.st_ino}"
    return bool(env.get("INVOCATION_ID"))


class JournalFormatter(logging.Formatter):
    """One line per record, ``<N>`` priority first, no time (journald adds it)."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prio = next((p for level, p in _PRIORITY if record.levelno >= level), 7)
        return f"<{prio}>" + super().format(record).replace("\n", " | ")


def stderr_handler(foreground: bool, env: Mapping[str, str] | None = None) -> logging.Handler | None:
    """The daemon's stderr log handler: journald lines under systemd, the file's format in the
    foreground, none otherwise (``array start`` points stderr at log/daemon.out)."""
    journal = under_systemd(env)
    if not (journal or foreground):
        return None
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO)
    if journal:
        handler.setFormatter(JournalFormatter())
    return handler
