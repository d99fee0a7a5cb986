"""Remote attach over NBD: volumes and snapshot images served to test hosts, qemu and libnbd.

``proto`` (constants and message encoding), ``negotiate`` (the option state machine) and
``transmit`` (request rules, block status extents) are pure; ``exportfile`` persists the
pool's exports; ``catalog`` resolves them against the Store and applies the sharing rules;
``conn`` serves one client (``wire`` is its socket: buffered receives, gathered sends;
``poll`` bounds its polling for the next request before it sleeps;
``reads`` serves its READs; ``replies`` batches its replies into few sends, ``readers``
overlaps its queued reads on a remote pool, ``sender`` sends a large read's pieces while the
next is read, ``ahead`` asks for the next MiBs of a sequential stream) and ``server`` accepts
them, bounded, and stops them softly.
"""

from __future__ import annotations

__all__ = ["ahead", "catalog", "conn", "exportfile", "negotiate", "poll", "proto", "readers", "reads", "replies",
           "sender", "server", "tlsdir", "transmit", "wire"]
