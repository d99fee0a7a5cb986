"""Reply batching for one NBD connection: the replies to the requests of one receive batch go
out together, in one ``sendmsg`` (one TCP send, one wake-up of the client) instead of one each.

The connection's thread adds each reply (its header and data buffers, which must stay unchanged
until sent) in the order it serves the requests, and flushes before it would block: when no
complete request is left in its receive buffer, before it waits for a read worker, before a
large read and at the end. A batch also goes out on its own once it holds BATCH_REPLIES
replies (so the client works on those while the rest are served, instead of waiting for a
whole queue depth), ``limit`` bytes or MAX_PARTS buffers (sendmsg takes at most IOV_MAX =
1024). The protocol allows replies in any order; replies from the durability workers go
out between batches, never inside one.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["BATCH_BYTES", "BATCH_REPLIES", "MAX_PARTS", "ReplyBatch"]

BATCH_BYTES = 256 << 10  # a batch goes out once it holds this many bytes
BATCH_REPLIES = 4  # ... or this many replies: the client works on these while the rest are served
MAX_PARTS = 512  # ... or this many buffers


class ReplyBatch:
    """Replies gathered by one thread. ``send(*parts)`` sends buffers in order (all of them or
    raises); ``sent(n)`` is told after each send that n more replies are out."""

    def __init__(self, send: Callable[..., None], sent: Callable[[int], None], limit: int = BATCH_BYTES,
                 max_replies: int = BATCH_REPLIES) -> None:
        self._send, self._sent, self.limit, self.max_replies = send, sent, limit, max_replies
        self.parts: list[bytes | memoryview] = []
        self.nbytes = 0
        self.replies = 0
        self.sends = 0  # sends made (tests and figures: replies / sends is the batching achieved)

    def add(self, *parts: bytes | memoryview) -> None:
        """One reply: its buffers, in order."""
        self.parts.extend(parts)
        n = 0
        for p in parts:  # a loop, not sum() of a generator: 0.2 us less on every reply
            n += len(p)
        self.nbytes += n
        self.replies += 1
        if self.replies >= self.max_replies or self.nbytes >= self.limit or len(self.parts) >= MAX_PARTS:
            self.flush()

    def flush(self) -> int:
        """Send what is gathered; the number of replies sent."""
        if not self.replies:
            return 0
        parts, n = self.parts, self.replies
        self.parts, self.nbytes, self.replies = [], 0, 0
        self.sends += 1
        self._send(*parts)
        self._sent(n)
        return n

    def __len__(self) -> int:
        return self.replies
