"""Owner-only files of a pool, and the warnings about where its key file lives.

A pool's metadata and logs name its volumes, snapshots and peers, so vstor keeps them to its
owner: ``pool.json`` and the files under ``meta/`` are 0600 and the ``journal``, ``meta`` and
``log`` directories 0700 (vstor.store.superblock), and ``log/daemon.log`` and
``log/daemon.out`` are 0600, tightened at every start if an older vstor made them wider.

The key file is the user's: vstor never changes it, it warns. ``pool init`` and ``array start``
print one line on stderr per problem and add it to ``log/daemon.log``:

* the key is readable by group or others (``chmod 600`` it);
* the key sits inside the pool directory, so any copy of the pool (a backup, rsync, a
  snapshot of the filesystem) carries its own key and its encryption protects nothing.
"""

from __future__ import annotations

import logging
import os
import stat
import sys

from vstor.store.superblock import layout

LOG_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
FILE_MODE, DIR_MODE = 0o600, 0o700


def private_dir(path: str) -> str:
    """Create ``path`` (and parents) if needed and make it 0700; returns it."""
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    if stat.S_IMODE(os.stat(path).st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def open_private(path: str) -> int:
    """Open ``path`` for appending, created 0600, and make an existing one 0600; returns the fd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
    if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
        os.fchmod(fd, FILE_MODE)
    return fd


class PrivateFileHandler(logging.FileHandler):
    """A logging.FileHandler whose file is 0600 (FileHandler itself creates it 0666 & ~umask)."""

    def _open(self):  # logging's hook for opening the stream
        return open(open_private(self.baseFilename), "a", encoding=self.encoding, errors=self.errors)


def log_path(pool: str, name: str = "daemon.log") -> str:
    """``POOL/log/NAME``, with the log directory made 0700."""
    return os.path.join(private_dir(layout(pool)["log"]), name)


def pool_log_handler(pool: str) -> logging.Handler:
    """The daemon's handler for ``POOL/log/daemon.log``: owner only, in the daemon's format."""
    handler = PrivateFileHandler(log_path(pool))
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


def key_file_warnings(pool: str, key_file: str | None) -> list[str]:
    """One line per problem with ``key_file`` for the pool at ``pool``; none for no key file or
    one that cannot be examined (opening the pool reports that)."""
    if not key_file:
        return []
    try:
        mode = stat.S_IMODE(os.stat(key_file).st_mode)
    except OSError:
        return []
    out = []
    if mode & 0o044:
        out.append(f"key file {key_file} is readable by group or others (mode {mode:04o}); "
                   f"make it owner-only: chmod 600 {key_file}")
    key, home = os.path.realpath(key_file), os.path.realpath(pool)
    if key.startswith(home + os.sep):
        out.append(f"key file {key_file} is inside the pool directory {pool}: every copy of the pool "
                   "carries its key; keep the key outside the pool")
    return out


def warn_key_file(pool: str, key_file: str | None, stderr: bool = True) -> list[str]:
    """Report :func:`key_file_warnings`: on stderr (``stderr``) and in ``log/daemon.log``."""
    lines = key_file_warnings(pool, key_file)
    if not lines:
        return lines
    log = logging.getLogger("vstor.keyfile")
    log.propagate = False  # only daemon.log (and the stderr line below), whatever else is set up
    handler = pool_log_handler(pool)
    log.addHandler(handler)
    try:
        for line in lines:
            log.warning("%s", line)
            if stderr:
                print(f"vstor: warning: {line}", file=sys.stderr)
    finally:
        log.removeHandler(handler)
        handler.close()
    return lines
