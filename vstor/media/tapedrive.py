"""A tape drive holding a cartridge: position, st semantics, the mt operations. Pure logic
over a :class:`~vstor.media.cartridge.Cartridge`; the FUSE adapter maps its errors to errno.

Behaviour follows the Linux st driver (Documentation/scsi/st.rst) and the checklist of
reference §4.1:

* the position is an object number; ``mt_fileno``/``mt_blkno`` are derived from it;
* variable-block mode (block size 0, the default): one write is one block; a read returns
  exactly one block, and a buffer shorter than the block is ENOMEM (st); fixed mode
  (``MTSETBLK n``) splits writes into n-byte blocks and reads whole blocks;
* reading a filemark returns 0 bytes and moves past it; at EOD reads return 0 bytes and do
  not move (two zero reads in a row: EOD);
* a write or filemark anywhere but EOD truncates the rest (WORM: refused);
* early warning: the first write past ``capacity - ew`` succeeds, the next returns ENOSPC
  once, later writes succeed until the hard end, where every write is ENOSPC;
* ``mt status`` shows EOT from that first write in the early-warning zone until the tape is
  repositioned (rewind, space, seek, eom, load, offline, set partition, a rewinding close),
  as st clears its EOM state on every repositioning; a tape that merely holds data into the
  zone does not show EOT (st keeps no such state after a load or rewind either);
* after writing, closing writes a filemark; the rewinding device then rewinds.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass

from vstor.errors import MediaError
from vstor.media.cartridge import Cartridge

# mt_op numbers (linux/mtio.h)
MTFSF, MTBSF, MTFSR, MTBSR, MTWEOF, MTREW, MTOFFL, MTNOP, MTEOM = 1, 2, 3, 4, 5, 6, 7, 8, 12
MTSETBLK, MTSEEK, MTTELL, MTLOAD, MTUNLOAD, MTCOMPRESSION, MTSETPART, MTMKPART = 20, 22, 23, 30, 31, 32, 33, 34
# mt_gstat bits
GMT_EOF, GMT_BOT, GMT_EOT, GMT_EOD, GMT_WR_PROT, GMT_ONLINE = (0x80000000, 0x40000000, 0x20000000, 0x08000000,
                                                              0x04000000, 0x01000000)
GMT_IM_REP_EN = 0x00010000
# Operations that first finish a write (st writes the filemark before moving the tape) ...
FLUSH_FIRST = frozenset({MTREW, MTOFFL, MTBSF, MTSEEK, MTFSF, MTFSR, MTBSR, MTEOM, MTUNLOAD})
# ... and all that reposition the tape: each clears the early warning state (and so EOT).
REPOSITION = FLUSH_FIRST | {MTLOAD, MTSETPART}


@dataclass
class DriveStatus:
    fileno: int
    blkno: int
    position: int
    partition: int
    blksize: int
    density: int
    gstat: int


class TapeDrive:
    def __init__(self, cart: Cartridge | list[Cartridge], density: int, writable: bool, protect: bool,
                 max_block: int, ew_bytes: int | None = None, delay: Callable[[str, float], None] | None = None,
                 repartition: Callable[[int], list[Cartridge]] | None = None) -> None:
        self.parts = cart if isinstance(cart, list) else [cart]  # one cartridge file per partition
        self.part = 0
        self.repartition = repartition  # MTMKPART: (partition 1 size in MiB) -> the new partitions
        self.density = density
        self.writable = writable  # the drive can write this generation
        self.read_only = protect or not writable
        self.max_block = max_block
        self.ew = ew_bytes if ew_bytes is not None else max(self.parts[0].capacity // 50, 1 << 20)
        self.pos = 0
        self.blksize = 0
        self.read_bytes = self.write_bytes = 0  # since the load (the metrics exporter reads them)
        self.wrote = False  # the last operation was a write: close/rewind/offline add a filemark
        self.ew_state = 0  # 0 before EW, 1 the EW signal is due, 2 it was given
        self.delay = delay or (lambda kind, fraction: None)  # the timing model: (operation, share of tape)

    @property
    def cart(self) -> Cartridge:
        """The cartridge file of the current partition."""
        return self.parts[self.part]

    # -- data --------------------------------------------------------------------------------
    def write(self, data: bytes) -> int:
        if not data:
            return 0
        self._check_writable()
        blocks = [data] if self.blksize == 0 else self._fixed(data)
        for b in blocks:
            if len(b) > self.max_block:
                raise MediaError(f"block of {len(b)} bytes exceeds the largest this drive takes through FUSE "
                                f"({self.max_block}); use a smaller block size (tar -b)", errno.EINVAL)
        if self.ew_state == 1:
            self.ew_state = 2
            raise MediaError("early warning: the tape is nearly full", errno.ENOSPC)
        self._truncate_here()
        prepared = [self.cart.stored_size(b) for b in blocks]
        if self.cart.used + sum(len(p[0]) + 64 for p in prepared) > self.cart.capacity:
            raise MediaError(f"end of tape: {self.cart.barcode} is full", errno.ENOSPC)  # nothing written
        for b, p in zip(blocks, prepared, strict=True):
            self.cart.append(b, p)
        self.pos = self.cart.eod
        self.wrote = True
        self.write_bytes += len(data)
        if self.ew_state == 0 and self.cart.used >= self.cart.capacity - self.ew:
            self.ew_state = 1
        return len(data)

    def _fixed(self, data: bytes) -> list[bytes]:
        if len(data) % self.blksize:
            raise MediaError(f"fixed-block mode: writes must be multiples of {self.blksize} bytes", errno.EINVAL)
        return [data[i : i + self.blksize] for i in range(0, len(data), self.blksize)]

    def read(self, size: int) -> bytes:
        self._finish_write()
        if self.pos >= self.cart.eod:
            return b""
        if self.blksize:
            out = bytearray()
            while len(out) + self.blksize <= size and self.pos < self.cart.eod:
                data = self.cart.read(self.pos)
                if data is None:
                    if not out:
                        self.pos += 1
                    break
                out += data
                self.pos += 1
            self.read_bytes += len(out)
            return bytes(out)
        data = self.cart.read(self.pos)
        if data is None:
            self.pos += 1
            return b""
        if len(data) > size:
            raise MediaError(f"block {self.pos} is {len(data)} bytes, larger than the {size}-byte read buffer",
                            errno.ENOMEM)
        self.pos += 1
        self.read_bytes += len(data)
        return data

    # -- mt operations ---------------------------------------------------------------------------
    def op(self, op: int, count: int) -> None:
        if op in FLUSH_FIRST:
            self._finish_write()
        if op in REPOSITION:
            self.ew_state = 0  # as st: repositioning clears a pending early warning and EOT
        before = self.pos
        try:
            self._op(op, count)
        finally:
            moved = abs(self.pos - before) / max(1, self.cart.eod)
            if moved:
                self.delay("rewind" if self.pos == 0 else "locate", moved)

    def _op(self, op: int, count: int) -> None:
        if op in (MTREW, MTOFFL, MTUNLOAD, MTLOAD):
            self.pos = 0
        elif op == MTFSF:
            self._space_files(count)
        elif op == MTBSF:
            self._space_files(-count)
        elif op == MTFSR:
            self._space_records(count)
        elif op == MTBSR:
            self._space_records(-count)
        elif op == MTWEOF:
            self._check_writable()
            self._truncate_here()
            for _ in range(count):
                self.cart.append(None)
            self.pos = self.cart.eod
            self.cart.flush()  # a filemark (also WEOF 0) is a synchronization point
            self.wrote = False
        elif op == MTEOM:
            self.pos = self.cart.eod
        elif op == MTSETBLK:
            if count > self.max_block:
                raise MediaError(f"block size {count} exceeds the FUSE request limit {self.max_block}", errno.EINVAL)
            self.blksize = count
        elif op == MTSEEK:
            if not 0 <= count <= self.cart.eod:
                raise MediaError(f"cannot seek to block {count}: the tape ends at {self.cart.eod}", errno.EIO)
            self.pos = count
        elif op == MTSETPART:
            if not 0 <= count < len(self.parts):
                raise MediaError(f"{self.cart.barcode} has {len(self.parts)} partition(s), not {count + 1}", errno.EIO)
            self.part, self.pos = count, 0
        elif op == MTMKPART:
            self._check_writable()
            if self.cart.worm or self.repartition is None:
                raise MediaError(f"{self.cart.barcode} cannot be partitioned (WORM or not supported)", errno.EINVAL)
            self.parts = self.repartition(count)
            self.part, self.pos, self.wrote, self.ew_state = 0, 0, False, 0
        elif op in (MTNOP, MTCOMPRESSION):
            pass
        else:
            raise MediaError(f"mt operation {op} is not supported", errno.EINVAL)

    def _space_files(self, count: int) -> None:
        marks = self.cart.filemarks
        if count >= 0:
            ahead = [m for m in marks if m >= self.pos]
            if len(ahead) < count:
                self.pos = self.cart.eod
                raise MediaError(f"only {len(ahead)} filemarks ahead, not {count}", errno.EIO)
            if count:
                self.pos = ahead[count - 1] + 1
        else:
            behind = [m for m in marks if m < self.pos]
            if len(behind) < -count:
                self.pos = 0
                raise MediaError(f"only {len(behind)} filemarks behind, not {-count}", errno.EIO)
            self.pos = behind[count]  # on the BOT side of the filemark, as st's MTBSF

    def _space_records(self, count: int) -> None:
        step = 1 if count > 0 else -1
        for _ in range(abs(count)):
            nxt = self.pos if step > 0 else self.pos - 1
            if nxt < 0 or nxt >= self.cart.eod:
                raise MediaError("spaced to the beginning or end of the tape", errno.EIO)
            if self.cart.is_filemark(nxt):
                self.pos = nxt + 1 if step > 0 else nxt
                raise MediaError("stopped at a filemark", errno.EIO)
            self.pos += step

    # -- state -----------------------------------------------------------------------------------
    def status(self) -> DriveStatus:
        fileno, blkno = self.cart.file_and_block(self.pos)
        g = GMT_ONLINE | GMT_IM_REP_EN
        if self.pos == 0:
            g |= GMT_BOT
        if self.pos == self.cart.eod and self.pos:
            g |= GMT_EOD
        if self.pos and self.cart.is_filemark(self.pos - 1):
            g |= GMT_EOF
        if self.ew_state:
            g |= GMT_EOT  # a write met the early warning since the last repositioning
        if self.read_only:
            g |= GMT_WR_PROT
        return DriveStatus(fileno, blkno, self.pos, self.part, self.blksize, self.density, g)

    def close(self, rewind: bool) -> None:
        """End of an open: after writing, a filemark; then rewind for the rewinding device."""
        self._finish_write()
        self.cart.flush()
        if rewind:
            self.pos, self.ew_state = 0, 0

    def _finish_write(self) -> None:
        if self.wrote:
            self.wrote = False
            self.cart.append(None)
            self.pos = self.cart.eod
            self.cart.flush()

    def _truncate_here(self) -> None:
        if self.pos < self.cart.eod:
            if self.cart.worm:
                raise MediaError(f"{self.cart.barcode} is WORM: writing before the end of data (block {self.pos} "
                                f"of {self.cart.eod}) would overwrite", errno.EACCES)
            self.cart.truncate(self.pos)

    def _check_writable(self) -> None:
        if self.read_only:
            raise MediaError(f"{self.cart.barcode} is write-protected (or this drive cannot write its "
                            "generation)", errno.EACCES)
