"""The array's side of backup clients.

Pure layers first:

* ``archive``: the pax members the array writes to tape for each file (plain tar reads them);
* ``session``: one backup stream: checks, verification, tape, catalog rows;
* ``readback``: reading byte ranges of a job back from tape, positioned at their records;
* ``admission``: who a client is, which policy its stream runs under, the failure codes;
* ``listing``: a job's pax stream read back into its entries (catalog rebuild), checked;

and the I/O adapters: ``service`` (the registry and the listener, and the engine's entry
point), ``receive`` (a job's stream to tape and catalog), ``runs`` (agents' connections and
the runs asked of them), ``restoring`` (restores and verifies of client jobs), ``relist`` (a
job's file list recorded from its media).
"""

from __future__ import annotations

__all__ = ["admission", "archive", "listing", "readback", "receive", "relist", "restoring", "runs", "service",
           "session"]
