"""RadosBackend: a pool kept as objects in a Ceph RADOS pool (python3-rados).

Layout (docs/formats.md, "Pools on RADOS"), for ``rados://POOL/PREFIX``:

* Blobs live in the RADOS namespace ``PREFIX``, one object each, named like the local file
  (``pool.json``, ``meta/checkpoint.a``); their reads and writes are blobio.py's. ``put``
  is one ``write_full``: RADOS applies a single-object operation atomically, so a reader sees
  the old or the new content, never a mix, and it returns once every replica has it (durable).
  ``create`` is an exclusive-create write op (``LIBRADOS_CREATE_EXCLUSIVE`` + ``write_full``),
  one atomic operation. A blob over ``max_blob`` (MAX_BLOB) is striped under a generation and
  switched by a small head object, still atomically (blob.py).
* A journal segment is striped over objects of STRIPE_BYTES in the namespace
  ``PREFIX/journal``: ``NNNNNNNNNN.seg.SSSS`` (SSSS the stripe index, hex), so no object
  grows past RADOS' object size limit whatever the segment size. The omap of the object
  ``index`` in that namespace lists the segments (key: the ten-digit segment number), so
  listing is one omap read, never a scan of the pool. A segment is put in the index before
  its first stripe is created, and taken out before its stripes are removed: a crash in
  between leaves an empty listed segment (recovery treats it as never started) or unlisted
  stripes (never read; segment numbers are never reused).
* Segment writes are ``aio_write`` calls, up to MAX_IN_FLIGHT at a time; ``flush_segment``
  waits for every completion (a RADOS write completes when it is on every replica) and
  raises the first failure. Reads issued after a write by the same client are ordered
  after it by the OSD, so they see it. Small appends that continue each other are held
  (coalesce.py) and sent as one write at the next flush, read, size or cut of the segment,
  or when the next append does not continue them; with the read-ahead on, they are not held.
  segwrites.py does the writing.

Errors: librados errors become builtin OSError with their errno (ETIMEDOUT after
``rados_osd_op_timeout``, ENOSPC when the cluster is full, EDQUOT when the pool's quota is
reached). Writes carry FULL_TRY: without it a client *waits* while the pool or cluster is
full (librados pauses the op until its op timeout), with it the OSD answers ENOSPC or EDQUOT
at once, and deletes go through (that is how space is freed). Fault points as LocalBackend's.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from vstor.faults import NO_FAULTS, Faults
from vstor.store.backend.base import PoolBackend
from vstor.store.backend.coalesce import COALESCE_LIMIT
from vstor.store.backend.files import FileArea
from vstor.store.backend.rados.append import BlobAppender
from vstor.store.backend.rados.blob import StripedBlobs
from vstor.store.backend.rados.blobio import RadosBlobIO
from vstor.store.backend.rados.errors import FULL_TRY, omap_keys, os_error
from vstor.store.backend.rados.read import make_readahead
from vstor.store.backend.rados.segwrites import MAX_IN_FLIGHT, SegmentWrites
from vstor.store.backend.remover import Remover
from vstor.store.backend.stripes import stripe_spans
from vstor.store.journal.format import segment_name

if TYPE_CHECKING:
    from vstor.store.backend.rados.files import RadosFiles

__all__ = ["STRIPE_BYTES", "MAX_IN_FLIGHT", "RadosBackend", "connect_cluster"]

STRIPE_BYTES = 4 * 1024 * 1024
REMOVE_BATCH = 32  # stripe removes in flight at once when a segment is deleted
MAX_BLOB = 64 * 1024 * 1024  # under osd_max_write_size (90 MiB): one write_full must carry a blob
INDEX = "index"
DEFAULT_TIMEOUT = 30  # seconds: rados_osd_op_timeout, rados_mon_op_timeout, client_mount_timeout
PROBE = "probe"  # the object probe() rewrites, in the journal's namespace (not a blob)

T = TypeVar("T")


def _rados() -> Any:
    try:
        import rados  # python3-rados, Debian's build for /usr/bin/python3
    except ImportError:
        from vstor.errors import UsageError
        raise UsageError("RADOS pools need python3-rados: run vstor from .venv-rados ('make venv-rados')") from None
    return rados


def connect_cluster(conffile: str, client_id: str | None = None, timeout: int = DEFAULT_TIMEOUT) -> Any:
    """A connected ``rados.Rados`` whose operations fail with ETIMEDOUT after ``timeout``
    seconds instead of waiting for an unreachable OSD or monitor for ever."""
    rados = _rados()
    conf = {"rados_osd_op_timeout": str(timeout), "rados_mon_op_timeout": str(timeout),
            "client_mount_timeout": str(timeout)}
    try:
        cluster = rados.Rados(conffile=conffile, rados_id=client_id, conf=conf)
        cluster.connect(timeout=timeout)
    except rados.Error as e:
        raise os_error(e, f"cannot connect to the Ceph cluster of {conffile}") from None
    return cluster


class RadosBackend(RadosBlobIO, PoolBackend):
    kind = "rados"
    append_alignment = 4096  # BlueStore's allocation unit (bluestore_min_alloc_size, Ceph 16)

    def __init__(self, cluster: Any, pool: str, prefix: str, faults: Faults = NO_FAULTS,
                 owns_cluster: bool = False, max_blob: int = MAX_BLOB) -> None:
        self._rados = _rados()
        self._cluster, self._owns = cluster, owns_cluster
        self.pool, self.prefix, self.faults = pool, prefix, faults
        self.meta = self._call(lambda: cluster.open_ioctx(pool), f"cannot open RADOS pool {pool}")
        self.meta.set_namespace(prefix)
        self.jrn = cluster.open_ioctx(pool)
        self.jrn.set_namespace(f"{prefix}/journal")
        self._lock = threading.Lock()  # the file areas opened
        self.blobs = StripedBlobs(self.meta, self._rados, max_blob, min(max_blob, STRIPE_BYTES), self._call)
        self.readahead = make_readahead(lambda: self.jrn, self._rados, STRIPE_BYTES, self.stripe_name)  # readahead.py
        # small appends held for one write (coalesce.py); not with the read-ahead, whose fetches
        # could read a range before the held bytes are sent
        self.writes = SegmentWrites(self._rados, lambda: self.jrn, self.stripe_name, STRIPE_BYTES,
                                    COALESCE_LIMIT if self.readahead is None else 0,
                                    self.readahead.invalidate if self.readahead is not None else None,
                                    self._check_open)
        self.pending = self.writes.pending  # (tests and metrics read its counts)
        # a deleted segment's stripes are removed on a thread of its own (remover.py)
        self.remover = Remover(self._remove_stripes, self._stripes_described)
        self._file_areas: dict[str, RadosFiles] = {}  # opened on first use (file_area), closed by close()
        self._appender: BlobAppender | None = None  # opened on first use (append)

    def describe(self) -> str:
        return f"rados://{self.pool}/{self.prefix}"

    def _call(self, fn: Callable[[], T], what: str) -> T:
        try:
            return fn()
        except self._rados.Error as e:
            raise os_error(e, what) from None

    def _remove(self, io: Any, name: str) -> None:
        """``remove_object`` with FULL_TRY, so a delete that frees space is not held up by a full pool."""
        with self._rados.WriteOpCtx() as op:
            op.remove()
            io.operate_write_op(op, name, flags=FULL_TRY)

    @staticmethod
    def stripe_name(segno: int, stripe: int) -> str:
        return f"{segment_name(segno)}.{stripe:04x}"

    # -- segments --------------------------------------------------------------------------
    def list_segments(self) -> list[int]:
        keys = self._call(lambda: omap_keys(self._rados, self.jrn, INDEX), "cannot list the journal segments")
        return sorted(int(k) for k in keys or ())

    def _index(self, segno: int, add: bool) -> None:
        rados = self._rados
        with rados.WriteOpCtx() as op:
            key = f"{segno:010d}"
            if add:
                self.jrn.set_omap(op, (key,), (b"",))
            else:
                self.jrn.remove_omap_keys(op, (key,))
            self._call(lambda: self.jrn.operate_write_op(op, INDEX, flags=FULL_TRY),
                       f"cannot update the segment index for {segno}")

    def create_segment(self, segno: int, header: bytes) -> None:
        rados = self._rados
        self.remover.settle(segno)
        self._index(segno, True)
        with rados.WriteOpCtx() as op:
            op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
            op.write_full(bytes(header))
            self._call(lambda: self.jrn.operate_write_op(op, self.stripe_name(segno, 0), flags=FULL_TRY),
                       f"cannot create journal segment {segno}")
        self._forget(segno)

    def write_segment(self, segno: int, pos: int, data: bytes | memoryview) -> None:
        self.faults.hit("backend.write")
        self.writes.write(segno, pos, data)

    def flush_segment(self, segno: int) -> None:
        self.faults.hit("backend.flush")
        self.writes.flush(segno)

    def read_segment(self, segno: int, pos: int, size: int) -> bytes:
        self.remover.settle(segno)
        self.writes.send(segno)  # the OSD orders the read after it
        if self.readahead is None:
            return self._read_direct(segno, pos, size)
        return self.readahead.read(segno, pos, size, self._read_direct)

    def _read_direct(self, segno: int, pos: int, size: int) -> bytes:
        """read_segment without read-ahead: one synchronous read per stripe it touches."""
        rados = self._rados
        parts: list[bytes] = []
        for stripe, off, _at, n in stripe_spans(pos, size, STRIPE_BYTES):
            try:
                got = self.jrn.read(self.stripe_name(segno, stripe), n, off)
            except rados.ObjectNotFound:
                if stripe == 0:
                    raise FileNotFoundError(errno.ENOENT, f"journal segment {segno} does not exist") from None
                break
            except rados.Error as e:
                raise os_error(e, f"cannot read journal segment {segno}") from None
            parts.append(got)
            if len(got) < n:
                break
        return b"".join(parts)

    def _stripes(self, segno: int) -> list[int]:
        """The sizes of a segment's stripe objects, in order."""
        rados = self._rados
        out: list[int] = []
        while True:
            try:
                size, _mtime = self.jrn.stat(self.stripe_name(segno, len(out)))
            except rados.ObjectNotFound:
                return out
            except rados.Error as e:
                raise os_error(e, f"cannot stat journal segment {segno}") from None
            out.append(size)

    def segment_size(self, segno: int) -> int:
        self.remover.settle(segno)
        self.writes.send(segno)  # a stat after a write is ordered after it, as a read is
        sizes = self._stripes(segno)
        return (len(sizes) - 1) * STRIPE_BYTES + sizes[-1] if sizes else 0

    def truncate_segment(self, segno: int, size: int) -> None:
        """Also removes stripes past a gap: writes in flight at a crash may have left a later
        stripe without the one before it (at most MAX_IN_FLIGHT stripes further)."""
        self.remover.settle(segno)
        self.writes.send(segno)
        self.writes.wait(segno=segno)
        sizes = self._stripes(segno)
        for k in range(len(sizes) + 1, len(sizes) + MAX_IN_FLIGHT + 1):
            try:
                self._remove(self.jrn, self.stripe_name(segno, k))
            except self._rados.ObjectNotFound:
                pass
            except self._rados.Error as e:
                raise os_error(e, "cannot cut a segment") from None
        keep, off = divmod(size, STRIPE_BYTES)
        for k in range(len(sizes) - 1, keep, -1):  # from the end, so a crash leaves a shorter segment
            try:
                self._remove(self.jrn, self.stripe_name(segno, k))
            except self._rados.Error as e:
                raise os_error(e, "cannot cut a segment") from None
        if keep < len(sizes):
            with self._rados.WriteOpCtx() as op:
                op.truncate(off)
                self._call(lambda: self.jrn.operate_write_op(op, self.stripe_name(segno, keep), flags=FULL_TRY),
                           "cannot cut a segment")
        self._forget(segno)

    def delete_segment(self, segno: int) -> None:
        self.writes.forget(segno)  # bytes of a segment being deleted need not land
        self._index(segno, False)  # first: from here on the segment is never read
        self.remover.remove(segno)  # its stripes go in the background
        self._forget(segno)

    def _remove_stripes(self, segno: int) -> None:
        """Remove an unlisted segment's stripes, REMOVE_BATCH at a time in parallel (aio), from
        stripe 0 until a batch finds one missing (on the remover's thread). One by one, a stat
        and a remove per 4 MiB stripe, a 256 MiB segment took some 130 round trips, and the
        store deleted dead segments under its lock after a checkpoint: writers stalled 170-230
        ms (the p99 of 1 MiB O_DSYNC writes at QD16, benchmarks.md §13)."""
        first = 0
        while True:
            comps = []
            try:
                for k in range(first, first + REMOVE_BATCH):
                    with self._rados.WriteOpCtx() as op:
                        op.remove()
                        comps.append(self.jrn.operate_aio_write_op(op, self.stripe_name(segno, k), flags=FULL_TRY))
            except self._rados.Error as e:
                raise os_error(e, f"cannot delete journal segment {segno}") from None
            missing = False
            for comp in comps:
                comp.wait_for_complete()
                ret = comp.get_return_value()
                if ret == -errno.ENOENT:
                    missing = True
                elif ret < 0:
                    raise OSError(-ret, f"cannot delete journal segment {segno}: {errno.errorcode.get(-ret, ret)}")
            if missing:
                return
            first += REMOVE_BATCH

    def _stripes_described(self, segno: int) -> str:
        return f"the objects {segment_name(segno)}.* of namespace {self.prefix}/journal in RADOS pool {self.pool}"

    def close(self) -> None:
        if isinstance(self.meta, _Closed):  # closed already
            return
        self.writes.close()
        self.remover.close()  # every removal handed over ends first
        if self.readahead is not None:  # no read in flight when the connection goes
            self.readahead.drain()
        for area in self._file_areas.values():  # before the cluster goes
            area.close()
        if self._appender is not None:
            self._appender.close()
        meta, jrn = self.meta, self.jrn
        # librados crashes the process (SIGSEGV) on an I/O context used after its close: every
        # later use gets an OSError naming the pool instead.
        self.meta = self.jrn = _Closed(self.describe())
        meta.close()
        jrn.close()
        if self._owns:
            self._cluster.shutdown()

    # -- large files (added for issue 29: tape cartridges) -----------------------------------
    def file_area(self, area: str, local_dir: str) -> FileArea:
        """The files of ``area`` as striped objects in the namespace ``PREFIX/AREA`` (files.py)."""
        from vstor.store.backend.rados.files import RadosFiles
        return self._area(area, area, RadosFiles)

    def sparse_file_area(self, area: str, local_dir: str) -> FileArea:
        """The sparse files of ``area`` in the namespace ``PREFIX/AREA``: only written stripes (sparse.py)."""
        from vstor.store.backend.rados.sparse import RadosSparseFiles
        return self._area(f"sparse:{area}", area, RadosSparseFiles)

    def _area(self, key: str, area: str, cls: type[RadosFiles]) -> RadosFiles:
        """The file area ``key`` of kind ``cls`` over the namespace ``PREFIX/AREA``, opened once."""
        with self._lock:
            if key not in self._file_areas:
                self._file_areas[key] = cls(self._open_io(f"{self.prefix}/{area}"), f"{self.describe()}/{area}")
            return self._file_areas[key]

    def _open_io(self, namespace: str) -> Any:
        """A new I/O context of the pool, in ``namespace`` (its user closes it)."""
        io = self._call(lambda: self._cluster.open_ioctx(self.pool), f"cannot open RADOS pool {self.pool}")
        io.set_namespace(namespace)
        return io

    def _check_open(self) -> None:
        if isinstance(self.meta, _Closed):
            raise OSError(errno.EBADF, f"the RADOS connection of {self.describe()} is closed (used after close)")

    def _forget(self, segno: int) -> None:
        """Drop the read-ahead's chunks of a segment just created, cut or deleted."""
        if self.readahead is not None:
            self.readahead.drop_segment(segno)

    # -- outages -----------------------------------------------------------------------------
    def abandon_segment(self, segno: int) -> None:
        self.writes.forget(segno)  # held bytes never sent: the resume counts them dropped, as unflushed writes

    def probe(self) -> None:
        """One small write in the pool's namespace, FULL_TRY: it fails as a journal write would."""
        with self._rados.WriteOpCtx() as op:
            op.write_full(b"vstor probe\n")
            self._call(lambda: self.jrn.operate_write_op(op, PROBE, flags=FULL_TRY), "the Ceph cluster does not "
                       f"take writes to {self.describe()}")

    # -- ownership (lock.py, fenced.py) ----------------------------------------------
    @property
    def cluster(self) -> Any:
        """The ``rados.Rados`` client this backend uses (the pool lock takes and fences with it)."""
        return self._cluster


class _Closed:
    """Stands in for the I/O contexts of a closed RadosBackend: any use is EBADF, not a crash."""

    def __init__(self, where: str) -> None:
        self._where = where

    def __getattr__(self, name: str) -> Any:
        raise OSError(errno.EBADF, f"the RADOS connection of {self._where} is closed (used after close)")
