"""mfusepy's FUSE class with reads that fill libfuse's buffer in place, and writes from it.

mfusepy's read callback asks the operations for ``bytes`` and then copies them into the
buffer libfuse passed (``ctypes.memmove``): each 1 MiB read is allocated, filled, and copied
once more. Here the operations' ``read_into(path, view, offset, fh)`` gets a memoryview of
libfuse's buffer instead and returns how many bytes it filled, so volume data goes from the
journal into that buffer with one system call and is verified there (readpath.py).

The view is valid only during the call: libfuse owns the buffer and sends it to the kernel
once the callback returns. Nothing may keep the view or a slice of it.

Writes the other way: mfusepy copies each write's data into a bytes object before the
operations see it; here operations that define ``write_from(path, view, offset, fh)`` get a
memoryview of libfuse's buffer instead, with the same rule (valid during the call only).

Every callback first keeps its worker thread's Python thread state (threadstate.py), so a
request no longer creates and deletes one.
"""

from __future__ import annotations

import ctypes
from typing import Any

from vstor.fuse.options import select_library, tuning
from vstor.fuse.threadstate import keep_thread_state

select_library()
import mfusepy as fuse  # noqa: E402


class DirectReadFUSE(fuse.FUSE):
    def __init__(self, operations: Any, mountpoint: str, **kwargs: Any) -> None:
        """As mfusepy's (which mounts and serves until unmounted)."""
        self.keep_states = bool(tuning().get("keep_tstate", 1))  # VSTOR_FUSE_TUNING=keep_tstate=0: benchmarks
        super().__init__(operations, mountpoint, **kwargs)

    def _wrapper(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """mfusepy's entry for every callback, on libfuse's thread."""
        if self.keep_states:
            keep_thread_state()
        return super()._wrapper(func, *args, **kwargs)

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        """libfuse's read callback (mfusepy wraps it to turn exceptions into -errno)."""
        if size <= 0:
            return 0
        return self.operations.read_into(self._name(path), _view(buf, size), offset, self._fh(fip))

    def write(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        """libfuse's write callback: operations with ``write_from(path, view, offset, fh)`` get a
        memoryview of libfuse's buffer (valid during the call only); others get bytes, as
        mfusepy gives them (a copy of the request: 1 MiB per 1 MiB write)."""
        view = _view(buf, size) if size > 0 else memoryview(b"")
        write_from = getattr(self.operations, "write_from", None)
        if write_from is None:
            return self.operations.write(self._name(path), bytes(view), offset, self._fh(fip))
        return write_from(self._name(path), view, offset, self._fh(fip))

    def _name(self, path: bytes | None) -> str | None:
        return None if path is None else path.decode(self.encoding, self.errors)

    def _fh(self, fip: Any) -> Any:
        return fip.contents if self.raw_fi else fip.contents.fh


def _view(buf: Any, size: int) -> memoryview:
    """libfuse's buffer of ``size`` bytes as a writable memoryview (valid during the callback only)."""
    return memoryview((ctypes.c_char * size).from_address(ctypes.addressof(buf.contents))).cast("B")
