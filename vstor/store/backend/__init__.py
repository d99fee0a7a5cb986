"""Where a pool's storage objects live: the one seam between the store and its storage.

``base.PoolBackend`` is the interface: numbered append-only journal segments and named blobs
(superblock, checkpoints, metadata files). ``local.LocalBackend`` keeps them as files in the
pool directory (the layout vstor always had); ``rados`` (a subpackage) keeps them as objects
in a Ceph RADOS pool (python3-rados, imported only when a rados:// pool is opened, so local
pools work without Ceph). ``location`` parses rados://CEPHPOOL/PREFIX and opens the backend
of a location; ``stub`` is a RADOS pool's local state directory and its pointer file.
``files`` is the seam for large files that are not segments (tape cartridges:
``base.PoolBackend.file_area``; optical disc images, ``base.PoolBackend.sparse_file_area``),
implemented on RADOS by ``rados.files`` and ``rados.sparse``. ``statefiles`` is the pool's
small state files (positions, pairs, exports, governance, media inventory, disc sides'
states) by name, over any backend's blobs. ``coalesce`` gathers small journal appends into
one RADOS write per flush (pure). ``readahead`` reads a remote backend's segments ahead of a
sequential reader, in parallel chunks (``rados.read``: the chunks' aio reads on RADOS).
``stripes`` says how a byte range falls on stripe objects (pure), for every striped read and
write on RADOS. ``remover`` removes a deleted segment's objects on a thread of its own (pure),
so that deleting dead segments under the store's lock does not wait for the OSDs. ``spares``
keeps a local pool's dead segment files for reuse by later segments, whose fdatasyncs then
need no extent conversion.
"""

from __future__ import annotations

__all__ = ["base", "coalesce", "files", "local", "location", "rados", "readahead", "remover", "spares", "statefiles",
           "stripes", "stub"]
