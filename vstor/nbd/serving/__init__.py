"""One NBD client's transmission phase, once it is attached to an export.

``conn`` serves the client: one thread reads every request and serves it in order, FLUSH and
FUA on durability workers. ``wire`` is its socket (buffered receives, gathered sends, the
switch to TLS); ``poll`` bounds its polling for the next request before it sleeps;
``reads`` serves its READs (answered from memory, deferred, handed to workers, or streamed);
``replies`` batches its replies into few sends; ``readers`` overlaps its queued reads on a
remote pool; ``sender`` sends a large read's pieces while the next is read (the next MiBs of
a sequential stream are asked for by vstor.store.reads.ahead, which backup jobs share);
``turns`` lets a server's connections serve their batches in turns instead of handing the
GIL to each other at every system call.
"""

from __future__ import annotations

__all__ = ["conn", "poll", "readers", "reads", "replies", "sender", "turns", "wire"]
