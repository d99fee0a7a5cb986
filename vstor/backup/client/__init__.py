"""Backup clients: hosts that send their files to the array over mutual TLS.

Pure layers first:

* ``wire``: the client protocol's frames and their optional AES-GCM sealing (no sockets);
* ``scan``: a client's files, their metadata, sparse extents and hard links, and what an
  incremental must send;
* ``archive``: the pax members the array writes to tape for each file (plain tar reads them);
* ``session``: the array's side of one backup stream: checks, verification, tape, catalog rows;
* ``extract``: recreating files with their metadata (restore on the array or on the agent);
* ``readback``: reading byte ranges of a job back from tape, positioned at their records;
* ``admission``: who a client is, which policy its stream runs under, the failure codes;
* ``listing``: a job's pax stream read back into its entries (catalog rebuild), checked;

and the thin I/O adapters: ``conn`` (frames over TLS), ``agent`` (push and serve on a client),
``service`` (the registry and the listener on the array, and the engine's entry point),
``receive`` (a job's stream to tape and catalog), ``runs`` (agents' connections and the runs
asked of them), ``restoring`` (its restores), ``relist`` (a job's file list recorded from its
media).
"""

from __future__ import annotations

__all__ = ["admission", "agent", "archive", "conn", "extract", "listing", "readback", "receive", "relist", "restoring",
           "runs", "scan", "service", "session", "wire"]
