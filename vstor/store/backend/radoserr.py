"""librados errors as the builtin OSError the store's callers handle (shared by the RADOS
backend, its striped blobs and its striped file areas, so none of them imports another for it)."""

from __future__ import annotations

import errno

__all__ = ["os_error"]


def os_error(e: Exception, what: str) -> OSError:
    """A librados error as the builtin OSError the store's callers handle."""
    code = abs(getattr(e, "errno", None) or errno.EIO)
    cls = {errno.ENOENT: FileNotFoundError, errno.EEXIST: FileExistsError}.get(code, OSError)
    return cls(code, f"{what}: {e}")
