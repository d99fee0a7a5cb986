"""Read-ahead of one reader's sequential stream of large reads. Pure.

A reader copying or scanning a volume (``qemu-img convert`` or ``nbdcopy`` over NBD, fio, a
backup job) sends large reads, each starting where the one before ended. The segment files'
own readahead in the kernel then keeps one window in flight; asking for the next few MiB of
the volume as well (``Store.prefetch``: WILLNEED on the records that hold them) keeps the
disk's queue fed steadily. Over NBD, in process, cold 1 MiB reads of a 4 GiB volume ran at
0.80-1.55 GB/s (mean 1.14) with 4 MiB asked for ahead and 0.50-1.01 (mean 0.74) without; at
queue depth 16, 1.09-1.22 GB/s against 1.06-1.08, with a p99 of 18-20 ms against 24-25 (at
depth 1 no faster until the asking moved after the reply's pieces were queued, out of the
client's wait: then 1.03-1.14 GB/s against 0.92-0.95; docs/benchmarks-history.md section 10).
16 MiB ahead was no better there (session 34, vstor alone through tools/bench_nbd.py, 2 GiB,
three alternating pairs: 1 MiB reads at QD1 1.18-1.46 GB/s against 1.29-1.40 with 4 MiB, at
QD16 1.07-1.62 against 1.67-1.73). On an aged volume, whose every MiB holds dozens of 4 KiB
records scattered over the journal, asking for those ahead lets the disk fetch them side by
side while the reader works (docs/benchmarks.md section 9, "Stream read-ahead of small
records").

Those figures were taken with the disk's default read-ahead (``read_ahead_kb`` 128). Where the
device reads ahead at least as far as ``ahead`` (``Journal.kernel_readahead``; 8 MiB on the
development VM's virtio disk), the kernel's read-ahead of the segment files already covers a
fresh volume's large records, and asking for them again only adds the WILLNEED calls' work
(about 120 us per MiB) to the stream: in process over the loopback, cold 1 MiB reads at QD1
ran 1,405-2,397 MB/s (mean 1,985) asking for small records only against 1,489-2,045 (mean
1,707) asking for all, and at QD16 1,588-1,970 (mean 1,802) against 1,409-1,949 (1,677); with
``read_ahead_kb`` set to 128, asking for all was the faster (mean 1,579 against 1,318 MB/s).
So the NBD server asks for the large records only where the device reads ahead less far
than ``ahead`` (docs/benchmarks.md section 10, "Read-ahead the kernel already does").

:class:`StreamAhead` says, for each large read, which range past it to ask for: nothing
until a read continues the previous one; then up to ``ahead`` bytes past the read's end,
in steps of at least ``step`` bytes, never asking for a byte twice while the stream goes on.
A read elsewhere ends the stream. One reader's thread uses it.
"""

from __future__ import annotations

__all__ = ["AHEAD", "STEP", "StreamAhead"]

AHEAD = 4 << 20  # bytes of the volume asked for past a sequential read
STEP = 1 << 20  # ... in requests of at least this much


class StreamAhead:
    def __init__(self, ahead: int = AHEAD, step: int = STEP) -> None:
        self.ahead, self.step = ahead, step
        self._next = -1  # where the last large read ended
        self._asked = 0  # the stream's data is asked for up to here

    def next_range(self, offset: int, length: int, size: int) -> tuple[int, int] | None:
        """(start, length) to ask for after a read of [offset, offset+length) of a volume of
        ``size`` bytes, or None."""
        end = offset + length
        sequential = offset == self._next
        self._next = end
        if not sequential:
            self._asked = end
            return None
        start, stop = max(self._asked, end), min(end + self.ahead, size)
        if stop - start < min(self.step, size - start) or stop <= start:
            return None
        self._asked = stop
        return start, stop - start
