"""A pool on Ceph RADOS (python3-rados; nothing here is imported for a local pool).

``backend.RadosBackend`` keeps a pool's journal segments striped over objects and its blobs
as objects (layout and atomicity in docs/formats.md, "Pools on RADOS"); its blobs' reads and
writes are in ``blobio``, its segments' writes (aio, held appends, failures kept for the
flush) in ``segwrites``, and a blob larger than one RADOS write is kept by ``blob`` as
stripes switched by a head object. ``errors`` turns librados errors into OSError and holds
the FULL_TRY flag. ``files`` stripes large files (tape cartridges) over objects and
``sparse`` stores only written stripes (optical disc images); ``append`` appends to a state
blob with one versioned RADOS append (the audit log); ``read`` makes the read-ahead's aio
reads. ``lock`` is the pool's exclusive RADOS lock (one daemon at a time), with takeover by
fencing; ``clslock`` its bytes (the cls_lock calls python3-rados lacks, the holder record);
``fenced`` the daemon's RADOS backend, on the lock's client, whose blocklist errors stop
the store.
"""

from __future__ import annotations

__all__ = ["append", "backend", "blob", "blobio", "clslock", "errors", "fenced", "files", "lock", "read", "segwrites",
           "sparse"]
