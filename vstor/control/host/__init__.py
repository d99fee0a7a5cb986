"""The daemon's adapters to the host it runs on, and its process settings.

``lock`` is the exclusive pool lock (flock, plus the RADOS lock for a pool on RADOS);
``mounts`` wraps fusermount3 and mountinfo; ``loop`` attaches loop devices over volume images;
``freeze`` runs fsfreeze around a snapshot; ``sdnotify`` speaks systemd's readiness protocol;
``mallocpolicy`` and ``pygc`` set glibc's heap trimming and Python's cyclic GC for a long-lived
daemon.
"""

from __future__ import annotations

__all__ = ["freeze", "lock", "loop", "mallocpolicy", "mounts", "pygc", "sdnotify"]
