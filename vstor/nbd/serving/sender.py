"""The sender thread of one NBD connection: large reads go out in pieces while the next piece
is read.

Served in one go, a 1 MiB read is read from the journal (a wait for the disk when cold, then
the frames' checksums) and only then sent (the copy into the socket and, over a veth or the
loopback, the receiver's TCP work too): one after the other, each taking about half of the
request's time (docs/benchmarks-history.md section 10). With structured replies the protocol lets a
read's data go out as several OFFSET_DATA chunks, the last one flagged DONE; so
:meth:`ReplySender.stream`, called by the connection's thread, reads a large read piece by
piece into buffers of this sender and queues each piece, which the sender thread writes to
the socket while the next one is read. The socket write and the ``preadv`` both release the
GIL, so the two overlap.

Guarantees:

- Pieces leave in the order they were queued, so a reply's DONE chunk is its last.
- Only verified data is queued: a piece that fails its read is answered with an error chunk
  for its offset (DONE), queued after the pieces before it, and nothing after it is read.
- At most ``buffers`` pieces are held (reading or queued): :meth:`buffer` waits for one to be
  sent. Memory per connection: ``buffers * piece`` bytes, allocated on first use.
- After the socket fails, nothing more is sent: the queued pieces are dropped, and the
  connection's thread gets the error from its next :meth:`buffer` or :meth:`drain`.
- :meth:`drain` returns once everything queued before it is sent (the replies to what was
  served go out before the connection closes).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import Queue, SimpleQueue
from typing import Any

from vstor.errors import VstorError
from vstor.nbd import proto as P

__all__ = ["PIECE", "BUFFERS", "ReplySender"]

# 512 KiB: against 256 KiB, 1 MiB reads at QD1 ran 1,193-1,210 MB/s against 1,109-1,134 (same at
# QD16); 128 KiB was slower, and 8 buffers no faster than 4 (docs/benchmarks-history.md section 10).
PIECE = 512 << 10  # bytes of a large read per OFFSET_DATA chunk
BUFFERS = 4  # pieces a connection holds: one being read, the rest queued or being sent

_STOP = object()


class ReplySender:
    """``send(*parts)`` writes buffers to the socket (all of them, or raises OSError);
    ``replied(n)`` is told once a reply's last chunk is out."""

    def __init__(self, send: Callable[..., None], replied: Callable[[int], None], name: str,
                 piece: int = PIECE, buffers: int = BUFFERS) -> None:
        self._send, self._replied, self._name = send, replied, name
        self.piece, self._nbuf = piece, buffers
        self._free: SimpleQueue[memoryview] = SimpleQueue()
        self._queue: Queue[Any] = Queue()  # joined by drain(): every item is marked done once sent or dropped
        self._made = 0
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def stream(self, cookie: int, offset: int, length: int, read_into: Callable[[int, memoryview], None]) -> None:
        """The reply to a READ of [offset, offset+length) as OFFSET_DATA chunks of ``piece``
        bytes, DONE on the last: each piece is read by ``read_into(offset, view)``, which fills
        ``view`` with verified data or raises VstorError, and queued at once. A piece that
        fails ends the reply with an ERROR_OFFSET chunk at its offset (the pieces before it
        were good data); nothing after it is read. Returns once the last chunk is queued."""
        end = offset + length
        while offset < end:
            n = min(self.piece, end - offset)
            buf = self.buffer()
            view = buf[:n]
            try:
                read_into(offset, view)
            except VstorError as e:
                self.release(buf)
                self.put(P.error_chunk(cookie, P.wire_errno(e.errno), str(e), offset), None, None, True)
                return
            last = offset + n >= end
            self.put(P.offset_data_header(cookie, offset, n, last), view, buf, last)
            offset += n

    def buffer(self) -> memoryview:
        """A buffer of ``piece`` bytes to read a piece into: a new one up to ``buffers``, then
        one whose piece has been sent or dropped (waits for it: the thread gives back every
        buffer it takes, after a failed send too)."""
        self._check()
        if self._made < self._nbuf:
            self._made += 1
            return memoryview(bytearray(self.piece))
        buf = self._free.get()
        self._check()
        return buf

    def release(self, buf: memoryview) -> None:
        """Give back a buffer that was not queued (its read failed)."""
        self._free.put(buf)

    def put(self, head: bytes, data: memoryview | None, buf: memoryview | None, last: bool) -> None:
        """Queue a chunk: ``head`` then ``data`` (a slice of ``buf``, which comes back free
        once sent); ``last``: the reply's final chunk."""
        self._check()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()
        self._queue.put((head, data, buf, last))

    def drain(self) -> None:
        """Wait until everything queued is sent; raises what the socket raised, if it failed."""
        self._queue.join()
        self._check()

    def close(self) -> None:
        """Stop the thread (after what is queued, unless the socket failed)."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def _check(self) -> None:
        if self._error is not None:
            raise OSError(f"sending to the client failed: {self._error}")

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._queue.task_done()
                return
            head, data, buf, last = item
            if self._error is None:
                try:
                    self._send(head, data) if data is not None else self._send(head)
                    if last:
                        self._replied(1)
                except BaseException as e:  # noqa: BLE001 - handed to the connection's thread
                    self._error = e
            if buf is not None:
                self._free.put(buf)
            self._queue.task_done()
