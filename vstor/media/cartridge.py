"""One tape cartridge file: its objects, appends, truncation, and crash-safe loading.

Guarantees:

* ``flush`` (called for every filemark, an explicit flush (WEOF 0), close and unload)
  makes every object written before it durable (fdatasync);
* ``open`` scans the file, checks every object's checksum after the flush mark, and cuts a
  torn or damaged tail, so after a crash the cartridge holds a prefix of what was written, and
  at least every object before the last flush. The objects before the mark, which were durable
  when it was written (tapeformat.py), are indexed from their headers alone: a load reads
  O(objects) headers, not the whole tape, and their payloads are checked when read (``read``
  reports a damaged block, never returns it) and by ``verify``. A WORM cartridge is checked
  whole at every load, hash chain included (tamper evidence);
* object numbers are dense (0, 1, 2, ...), so file and block numbers stay exact.

Compression (lz4, only when it saves space) and encryption (AES-256-GCM, key from the pool's
key file, never stored on the medium; the nonce is the first 12 stored bytes) are per block.
Capacity counts stored bytes, after compression.

The bytes live in a :class:`~vstor.store.backend.files.FileArea` given to the constructor (the
pool's: files under ``POOL/media`` on a local pool, striped objects on RADOS); without one,
``path`` is a local file. Every flush point above is the area file's ``sync``.
"""

from __future__ import annotations

import bisect
import os
from array import array

import lz4.block
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vstor.errors import CorruptData, FormatError, KeyError_
from vstor.lz4gate import Lz4Gate
from vstor.media import tapeformat as tf
from vstor.store.backend.files import FileArea, LocalFiles

LOCAL = LocalFiles("")  # names are paths


class Cartridge:
    def __init__(self, path: str, barcode: str, capacity: int, worm: bool = False, key: bytes | None = None,
                 compress: bool = True, partition: int = 0, files: FileArea = LOCAL) -> None:
        """``path``: the cartridge's name in ``files`` (a path when ``files`` is LOCAL)."""
        self.path, self.barcode, self.capacity, self.worm = path, barcode, capacity, worm
        self.area = files
        self.partition = partition
        self.compress = compress
        self._aead = AESGCM(key) if key else None
        self.file = files.open(path, create=True)
        self.offsets = array("Q")  # file offset of each object's header
        self.filemarks: list[int] = []  # object numbers of the filemarks, ascending
        self.chain = tf.ZERO_CHAIN
        self.cut: str = ""  # why a tail was cut at load, if one was
        self.indexed = 0  # objects the load took from their headers alone (before the flush mark)
        self._mark_end = 0  # the end the flush mark on the medium gives (0: none)
        self._closed = False
        self._lz4 = Lz4Gate()  # any saving is kept; early abort on incompressible data
        if self.file.created:
            self._head = tf.pack_file_header(barcode)
            self.file.pwrite(self._head, 0)
            self.file.sync(metadata=True)
            self.end = tf.FILE_HEADER_SIZE
        else:
            self._load()

    def _load(self) -> None:
        head = self.file.pread(tf.FILE_HEADER_SIZE, 0)
        tf.check_file_header(head, self.barcode)
        self._head = head
        size = self.file.size()
        mark = tf.unpack_mark(head)
        self._mark_end = mark[0] if mark else 0
        pos, n = tf.FILE_HEADER_SIZE, 0
        if mark and not self.worm and mark[0] <= size:  # shorter than the mark: lost durable bytes, check all
            pos, n = self._index(*mark)
        while pos < size:
            raw = self.file.pread(tf.OBJ_HEADER_SIZE, pos)
            try:
                h = tf.unpack_obj(raw)
                stored = self.file.pread(h.stored, pos + tf.OBJ_HEADER_SIZE) if h.stored else b""
                if h.number != n or h.partition != self.partition or len(stored) != h.stored:
                    raise FormatError(f"object {n} is cut short or out of order")
                tf.verify_obj(raw, h, stored)
                if self.worm and tf.next_chain(self.chain, raw, stored) != h.chain:
                    raise FormatError(f"object {n} breaks the WORM hash chain")
            except FormatError as e:
                self.cut = f"{e} at byte {pos}; {size - pos} bytes after it were dropped"
                self.file.truncate(pos)
                if self._mark_end > pos:  # the mark may never stand past the end
                    self._put_mark(pos, n)
                self.file.sync(metadata=True)
                break
            self.offsets.append(pos)
            if h.kind == tf.KIND_FILEMARK:
                self.filemarks.append(n)
            if self.worm:
                self.chain = h.chain
            pos += tf.OBJ_HEADER_SIZE + h.stored
            n += 1
        self.end = pos

    def _index(self, end: int, objects: int) -> tuple[int, int]:
        """Index the objects before the flush mark from their headers (numbers, partition,
        lengths: no payload is read). Returns where the checked scan goes on: the mark, or the
        first header that does not fit, or the start when the mark's count disagrees."""
        pos, n = tf.FILE_HEADER_SIZE, 0
        while pos < end:
            raw = self.file.pread(tf.OBJ_HEADER_SIZE, pos)
            try:
                h = tf.unpack_obj(raw)
            except FormatError:
                break
            nxt = pos + tf.OBJ_HEADER_SIZE + h.stored
            if h.number != n or h.partition != self.partition or nxt > end:
                break
            self.offsets.append(pos)
            if h.kind == tf.KIND_FILEMARK:
                self.filemarks.append(n)
            pos, n = nxt, n + 1
        if pos == end and n != objects:
            del self.offsets[:]
            del self.filemarks[:]
            return tf.FILE_HEADER_SIZE, 0
        self.indexed = n
        return pos, n

    def _put_mark(self, end: int, objects: int) -> None:
        """Write the flush mark (caller: every byte before ``end`` is durable, or about to be
        cut to ``end``); it is itself durable at the next sync."""
        self.file.pwrite(tf.pack_mark(self._head, end, objects), tf.MARK_AT)
        self._mark_end = end

    @property
    def fd(self) -> int:
        """The descriptor of a local cartridge file (-1 when it is not one)."""
        return getattr(self.file, "fd", -1)

    # -- geometry ----------------------------------------------------------------------------
    @property
    def eod(self) -> int:
        """The object number of EOD (one past the last object)."""
        return len(self.offsets)

    @property
    def used(self) -> int:
        return self.end - tf.FILE_HEADER_SIZE

    def is_filemark(self, n: int) -> bool:
        i = bisect.bisect_left(self.filemarks, n)
        return i < len(self.filemarks) and self.filemarks[i] == n

    def file_and_block(self, n: int) -> tuple[int, int]:
        """st's (mt_fileno, mt_blkno) at object position ``n``."""
        files = bisect.bisect_left(self.filemarks, n)
        start = self.filemarks[files - 1] + 1 if files else 0
        return files, n - start

    def files(self) -> int:
        return len(self.filemarks)

    # -- reading -----------------------------------------------------------------------------
    def read(self, n: int) -> bytes | None:
        """Object ``n``'s data (None for a filemark)."""
        pos = self.offsets[n]
        raw = self.file.pread(tf.OBJ_HEADER_SIZE, pos)
        h = tf.unpack_obj(raw)
        if h.kind == tf.KIND_FILEMARK:
            return None
        stored = self.file.pread(h.stored, pos + tf.OBJ_HEADER_SIZE)
        try:
            tf.verify_obj(raw, h, stored)
        except FormatError as e:
            raise CorruptData(f"cartridge {self.barcode}: block {n} is damaged ({e}); not returned") from None
        if h.flags & tf.OF_AES:
            if self._aead is None:
                raise KeyError_(f"cartridge {self.barcode} is encrypted: start the array with its key")
            try:
                stored = self._aead.decrypt(stored[:12], stored[12:], self._ad(n))
            except Exception:
                raise KeyError_(f"cartridge {self.barcode}: block {n} does not decrypt (wrong key?)") from None
        if h.flags & tf.OF_LZ4:
            stored = lz4.block.decompress(stored, uncompressed_size=h.length)
        return stored

    def _ad(self, n: int) -> bytes:
        return self.barcode.encode() + n.to_bytes(8, "little")

    # -- writing -----------------------------------------------------------------------------
    def truncate(self, n: int) -> None:
        """Drop object ``n`` and everything after it (n becomes EOD)."""
        if n >= self.eod:
            return
        self.end = self.offsets[n]
        del self.offsets[n:]
        del self.filemarks[bisect.bisect_left(self.filemarks, n):]
        self.file.truncate(self.end)
        if self._mark_end > self.end:  # durable before new data lands where the mark still claims
            self._put_mark(self.end, n)
            self.file.sync(metadata=True)
        if self.worm:
            self.chain = tf.ZERO_CHAIN if n == 0 else tf.unpack_obj(
                self.file.pread(tf.OBJ_HEADER_SIZE, self.offsets[n - 1])).chain

    def stored_size(self, data: bytes) -> tuple[bytes, int]:
        """The bytes a block would take on the medium, and their flags."""
        flags, stored = 0, data
        if self.compress and len(data) >= 512:
            packed = self._lz4.compress(data)
            if packed is not None:
                stored, flags = packed, tf.OF_LZ4
        if self._aead is not None:
            nonce = os.urandom(12)
            stored = nonce + self._aead.encrypt(nonce, stored, self._ad(self.eod))
            flags |= tf.OF_AES
        return stored, flags

    def append(self, data: bytes | None, prepared: tuple[bytes, int] | None = None) -> int:
        """Append a block (or a filemark: ``data`` None) at EOD; returns the stored size."""
        n = self.eod
        if data is None:
            kind, stored, flags, length = tf.KIND_FILEMARK, b"", 0, 0
        else:
            stored, flags = prepared or self.stored_size(data)
            kind, length = tf.KIND_DATA, len(data)
        head = tf.pack_obj(kind, flags, n, length, stored, self.chain if self.worm else None, self.partition)
        self.file.pwrite(head + stored, self.end)
        self.offsets.append(self.end)
        if kind == tf.KIND_FILEMARK:
            self.filemarks.append(n)
        if self.worm:
            self.chain = tf.unpack_obj(head).chain
        self.end += len(head) + len(stored)
        return len(head) + len(stored)

    def flush(self) -> None:
        """Make every object durable (sync), then move the flush mark to the end."""
        self.file.sync()
        if self._mark_end != self.end:
            self._put_mark(self.end, self.eod)

    def verify(self) -> dict:
        """Re-read every object: checksums, and the hash chain of a WORM cartridge."""
        chain, bad = tf.ZERO_CHAIN, []
        for n, pos in enumerate(self.offsets):
            raw = self.file.pread(tf.OBJ_HEADER_SIZE, pos)
            h = tf.unpack_obj(raw)
            stored = self.file.pread(h.stored, pos + tf.OBJ_HEADER_SIZE)
            try:
                tf.verify_obj(raw, h, stored)
                if self.worm and tf.next_chain(chain, raw, stored) != h.chain:
                    raise FormatError("hash chain broken")
            except FormatError as e:
                bad.append(f"object {n}: {e}")
            chain = h.chain
        return {"objects": self.eod, "damaged": bad, "chain": chain.hex() if self.worm else ""}

    def close(self) -> None:
        """Flush (the mark included) and release; closing twice is harmless."""
        if not self._closed and self._mark_end != self.end:
            self.flush()
        self._closed = True
        self.file.close()
