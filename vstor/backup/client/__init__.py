"""Backup clients: hosts that send their files to the array over mutual TLS.

What both sides share, and the client host's side:

* ``wire``: the client protocol's frames and their optional AES-GCM sealing (pure);
* ``conn``: frames over TLS (the thin socket adapter);
* ``scan``: a client's files, their metadata, sparse extents and hard links, and what an
  incremental must send (pure);
* ``extract``: recreating files with their metadata (restore on the array or on the agent);
* ``agent``: ``vstor client push`` and ``vstor client serve`` on a client host.

The array's side is the subpackage ``array``.
"""

from __future__ import annotations

__all__ = ["agent", "array", "conn", "extract", "scan", "wire"]
