"""What every RADOS module of the backend shares, so none of them imports another for it: librados
errors as the builtin OSError the store's callers handle, the FULL_TRY flag of writes, and the
paged listing of an object's omap keys (the segment index, a sparse file's stripe index)."""

from __future__ import annotations

import errno
from typing import Any

__all__ = ["FULL_TRY", "omap_keys", "os_error"]

FULL_TRY = 64  # LIBRADOS_OPERATION_FULL_TRY (librados.h; python3-rados 16 does not export it)
OMAP_PAGE = 1000  # keys read per omap call


def os_error(e: Exception, what: str) -> OSError:
    """A librados error as the builtin OSError the store's callers handle."""
    code = abs(getattr(e, "errno", None) or errno.EIO)
    cls = {errno.ENOENT: FileNotFoundError, errno.EEXIST: FileExistsError}.get(code, OSError)
    return cls(code, f"{what}: {e}")


def omap_keys(rados: Any, io: Any, obj: str, page: int = OMAP_PAGE) -> list[str] | None:
    """Every omap key of ``obj``, in order, read ``page`` at a time (one read operation each);
    None when the object does not exist. librados errors are left to the caller's ``_call``."""
    out: list[str] = []
    after = ""
    while True:
        with rados.ReadOpCtx() as op:
            it, _ret = io.get_omap_vals(op, after, "", page)
            try:
                io.operate_read_op(op, obj)
            except rados.ObjectNotFound:
                return None
            keys = [k for k, _v in it]
        if not keys:
            return out
        out += keys
        after = keys[-1]
