"""The READs of one NBD connection: answered from memory, deferred, handed to workers, or
streamed in pieces (conn.py says when each applies and why).

A read with more requests queued behind it (up to INLINE_READ_MAX; WORKER_READ_MAX remote) is
tried without waiting (``Store.read(nowait=True)``) and answered at once when the header cache
and the page cache hold what it needs. One that misses is deferred: the kernel was asked to
read it (WILLNEED), so the misses of one receive batch reach the disk side by side, and they
are served (:meth:`ReadServer.gather`) when the connection's thread would otherwise wait, or
before any request other than a read. Only on a remote pool (RADOS: no page cache to ask) do
queued reads go to the read workers (readers.py) to overlap their round trips. A lone read up
to INLINE_READ_MAX gets bytes of its own (its reply waits in the batch). A larger one on a
local pool is a stream the kernel reads ahead of, never tried without waiting; with
structured replies it goes out in pieces from the sender thread (sender.py) while the next
piece is read, and the stream's next MiBs are asked for (ahead.py: their small records, and
their large ones where the kernel reads ahead less far). Otherwise it is read into
the connection's reusable buffer and sent at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vstor.errors import VstorError, WouldBlock
from vstor.nbd import proto as P
from vstor.nbd.serving.readers import ReadWorkers
from vstor.nbd.serving.replies import ReplyBatch
from vstor.nbd.serving.sender import ReplySender
from vstor.nbd.serving.turns import ServingTurn
from vstor.nbd.serving.wire import Wire
from vstor.store.reads.ahead import StreamAhead

__all__ = ["INLINE_READ_MAX", "ReadServer"]

INLINE_READ_MAX = 128 << 10  # reads up to this size get their own bytes and wait in the reply batch
READ_WORKERS = 8  # per connection: small reads queued behind another overlap their disk reads
WORKER_READ_MAX = 1 << 20  # remote pools: larger reads are served by the connection's thread (bounds workers' bytes)
READ_QUEUE_MAX, READ_QUEUE_BYTES = 64, 8 << 20  # reads with the workers before their replies are gathered


class ReadServer:
    """Serves the READs of one connection's session on volume ``vid`` (snapshot ``sid``) of
    ``store``. Replies go into ``batch``; large streamed ones through a sender thread of its
    own, which sends with ``wire`` and counts each reply done with ``replied``. ``error``
    adds an error reply to the batch; ``buffer(n)`` lends the connection's data buffer.
    ``parallel``: other threads may send on the socket (plain TCP). ``turn``: the server's
    serving turn (turns.py), which this thread leaves before anything that may wait."""

    def __init__(self, store: Any, vid: int, sid: int | None, *, structured: bool, export_size: int,
                 batch: ReplyBatch, wire: Wire, replied: Callable[[int], None],
                 error: Callable[[int, int, str], None], buffer: Callable[[int], memoryview],
                 parallel: bool, name: str, turn: ServingTurn) -> None:
        self.store, self.vid, self.sid = store, vid, sid
        self.structured, self.export_size = structured, export_size
        self.batch, self.wire, self._replied, self.error, self._buffer = batch, wire, replied, error, buffer
        self.parallel, self.name, self.turn = parallel, name, turn
        # Large reads go out in pieces while the next is read: needs structured replies, a
        # socket two threads may use (not TLS) and a page cache (a local pool: a remote one
        # overlaps its round trips in the read workers instead).
        self.local = store.journal.local_files
        self.streaming = parallel and structured and self.local
        self.reads_waited = 0  # queued reads the page cache missed (deferred) or that went to the read workers
        self._readers: ReadWorkers | None = None
        self._readers_bytes = 0  # bytes of the reads with the workers
        self._deferred: list[tuple[int, int, int]] = []  # reads whose disk reads the kernel is making
        self._sender: ReplySender | None = None  # large reads, in pieces (local pools, plain TCP)
        self._ahead = StreamAhead()  # large reads in sequence: the volume's next MiBs asked for
        # ... their large records too only where the kernel's own read-ahead of the segment files
        # falls short of that window (ahead.py): asked again, they cost the stream a sixth.
        self._ask_large = store.journal.kernel_readahead < self._ahead.ahead

    def read(self, flags: int, cookie: int, offset: int, length: int) -> None:
        """A READ: tried without waiting (queued behind others), into new bytes that wait in
        the batch (small), or after the batch before it: in pieces or whole (large)."""
        store, vid = self.store, self.vid
        stream = length > INLINE_READ_MAX and self.local  # local segment files: the kernel reads ahead of it
        if not stream and length <= WORKER_READ_MAX:
            if self.wire.buffered() >= P.REQUEST.size:
                if self._queued_read(cookie, offset, length):
                    return
            # A lone read while another connection waits for the turn: from memory if it can be,
            # so that the turn is not left (and the GIL fought over) for it. When nobody waits it
            # is read after leaving the turn: trying first cost 4 KiB reads at QD1 a tenth.
            elif length <= INLINE_READ_MAX and self._contended_turn() and \
                    self._try_read((cookie, offset, length), nowait=True):
                return
        self.turn.leave()  # what follows may wait for the disk, the cluster or the socket
        if length <= INLINE_READ_MAX:  # new bytes of its own: its reply can wait in the batch
            self._reply_data(cookie, offset, length, store.read(vid, offset, length, sid=self.sid))
            return
        self.gather()
        self.batch.flush()
        if stream and self.streaming and not flags & P.CMDF_DF:
            self._stream_read(cookie, offset, length)
        else:
            self._read_whole(cookie, offset, length)
        ahead = self._ahead.next_range(offset, length, self.export_size) if stream else None
        if ahead is not None:  # once the reply is on its way: not in the client's wait
            store.prefetch(vid, *ahead, sid=self.sid, large=self._ask_large)

    def _contended_turn(self) -> bool:
        """This thread holds the serving turn and another connection waits for it."""
        return self.turn.waiting() and self.turn.held()

    def _read_whole(self, cookie: int, offset: int, length: int) -> None:
        """A large read into the connection's buffer, sent at once (after the batch before it)."""
        view = self._buffer(length)
        self.store.read_into(self.vid, offset, view, sid=self.sid)
        self._reply_data(cookie, offset, length, view)
        self.batch.flush()

    def _stream_read(self, cookie: int, offset: int, length: int) -> None:
        """A large read in pieces, each sent by the sender thread while the next is read."""
        if self._sender is None:
            self._sender = ReplySender(self.wire.send, self._replied, f"nbd-send-{self.name}")
        self._sender.stream(cookie, offset, length, self._read_piece)

    def _read_piece(self, offset: int, view: memoryview) -> None:
        self.store.read_into(self.vid, offset, view, sid=self.sid)

    def _queued_read(self, cookie: int, offset: int, length: int) -> bool:
        """A read with more requests queued behind it: answered now if memory holds it,
        deferred if the kernel is reading it, or given to the read workers (a remote pool).
        False: to be read in place, waiting (a remote pool over TLS: no workers)."""
        try:
            data = self.store.read(self.vid, offset, length, sid=self.sid, nowait=True)
        except WouldBlock as e:
            self.reads_waited += 1
            if e.started:  # served with the batch's other misses, when this thread would wait
                self._deferred.append((cookie, offset, length))
                if len(self._deferred) >= READ_QUEUE_MAX:
                    self.gather()
                return True
            if not self.parallel:
                return False
            if self._readers is None:
                self._readers = ReadWorkers(self._read_bytes, READ_WORKERS, f"nbd-{self.name}")
            elif self._readers.pending >= READ_QUEUE_MAX or self._readers_bytes + length > READ_QUEUE_BYTES:
                self.gather()  # bounds the memory a client's queued reads can hold
            self._readers_bytes += length
            self._readers.submit(cookie, offset, length)
            return True
        self._reply_data(cookie, offset, length, data)
        return True

    def _reply_data(self, cookie: int, offset: int, length: int, data: Any) -> None:
        if self.structured:
            self.batch.add(P.offset_data_header(cookie, offset, length, True), data)
        else:
            self.batch.add(P.simple_reply(cookie), data)

    def _read_bytes(self, offset: int, length: int) -> bytes:
        return self.store.read(self.vid, offset, length, sid=self.sid)

    def gather(self) -> None:
        """The replies of the deferred reads and of those given to the workers, into the batch."""
        if self._deferred:
            self._serve_deferred()
        if self._readers is None or not self._readers.pending:
            return
        self.turn.leave()  # it waits for the read workers
        self._readers_bytes = 0
        for cookie, offset, length, data, err in self._readers.gather(self.batch.flush):
            if err is not None:
                self.error(cookie, P.wire_errno(err.errno), str(err))
            else:
                self._reply_data(cookie, offset, length, data)

    def _serve_deferred(self) -> None:
        """Serve the reads that missed the page cache, whose disk reads the kernel started
        (side by side, like a worker pool's, without the thread hand-offs): first each again
        without waiting, which also starts the next read of those that needed two (a record
        header, then its data), then what is still missing by waiting for it."""
        todo, self._deferred = self._deferred, []
        later = []
        for req in todo:
            if not self._try_read(req, True):
                later.append(req)
        if later:
            self.batch.flush()  # what is ready goes out before this thread waits for the disk
            self.turn.leave()
        for req in later:
            self._try_read(req, False)

    def _try_read(self, req: tuple[int, int, int], nowait: bool) -> bool:
        """Reply to one read (cookie, offset, length): a deferred one, or a lone one in a
        contended turn; False if it would wait (with ``nowait``)."""
        cookie, offset, length = req
        try:
            data = self.store.read(self.vid, offset, length, sid=self.sid, nowait=nowait)
        except WouldBlock:
            return False
        except VstorError as e:
            self.error(cookie, P.wire_errno(e.errno), str(e))
            return True
        self._reply_data(cookie, offset, length, data)
        return True

    def drain(self) -> None:
        """Wait until the streamed replies are sent (after the last batch went out)."""
        if self._sender is not None:
            self._sender.drain()

    def close(self) -> None:
        """Stop the sender thread and the read workers."""
        if self._sender is not None:
            self._sender.close()
        if self._readers is not None:
            self._readers.close()
