"""Where a pool's storage objects live: the one seam between the store and its storage.

``base.PoolBackend`` is the interface: numbered append-only journal segments and named blobs
(superblock, checkpoints, metadata files). ``local.LocalBackend`` keeps them as files in the
pool directory (the layout vstor always had); ``radosbe.RadosBackend`` keeps them as objects in
a Ceph RADOS pool (python3-rados, imported only when a rados:// pool is opened, so local pools
work without Ceph), its blobs' reads and writes in ``radosblobio``. ``location`` parses
rados://CEPHPOOL/PREFIX and opens the backend of a location; ``stub`` is a RADOS pool's local
state directory and its pointer file; ``radoslock`` is the pool's exclusive RADOS lock (one
daemon at a time), with takeover by fencing; ``clslock`` its bytes (the cls_lock calls
python3-rados lacks, the holder record); ``fenced`` the daemon's RADOS backend, on the lock's
client, whose blocklist errors stop the store. ``files`` is the seam for large files that are
not segments (tape cartridges: ``base.PoolBackend.file_area``), with ``radosfiles`` its striped
implementation on RADOS, and ``radossparse`` the sparse one (optical disc images,
``base.PoolBackend.sparse_file_area``: only written stripes are stored). ``statefiles`` is the
pool's small state files (positions, pairs, exports, governance, media inventory, disc sides'
states) by name, over any backend's blobs; ``radoserr`` turns librados errors into OSError;
``radosblob`` keeps a blob larger than one RADOS write as stripes switched by a head object;
``coalesce`` gathers small journal appends into one RADOS write per flush, ``radossegwrites``
sends a segment's writes (aio, held appends, failures kept for the flush); ``radosappend``
appends to a state blob with one versioned RADOS append (the audit log).
``readahead`` reads a remote backend's segments ahead of a sequential reader, in parallel
chunks (``radosread``: the chunks' aio reads on RADOS). ``stripes`` says how a byte range
falls on stripe objects (pure), for every striped read and write on RADOS. ``remover`` removes
a deleted segment's objects on a thread of its own (pure), so that deleting dead segments under
the store's lock does not wait for the OSDs. ``spares`` keeps a local pool's dead segment files
for reuse by later segments, whose fdatasyncs then need no extent conversion.
"""

from __future__ import annotations

__all__ = ["base", "clslock", "coalesce", "fenced", "files", "local", "location", "radosappend", "radosbe", "radosblob",
           "radosblobio", "radoserr", "radosfiles", "radoslock", "radosread", "radossegwrites", "radossparse",
           "readahead", "remover",
           "statefiles", "spares", "stripes", "stub"]
