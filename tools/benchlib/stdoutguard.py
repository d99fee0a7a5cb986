"""A tool's results must reach its stdout, or the tool must fail: :func:`stdout_checked`.

Code that swaps ``sys.stdout`` (``contextlib.redirect_stdout`` run in two threads at once did) can
leave a buffer in its place, and every later line of the tool then vanishes while it exits 0.
"""

from __future__ import annotations

import functools
import io
import sys
from collections.abc import Callable
from typing import ParamSpec

__all__ = ["stdout_checked"]

P = ParamSpec("P")


def stdout_checked(main: Callable[P, int]) -> Callable[P, int]:
    """Wrap a tool's main: if sys.stdout is not, at its end, the stream it had at its start, put that
    stream back, write there what the stand-in caught (when it is a buffer), say so on stderr, and
    return non-zero (main's own code if it failed, else 1)."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        out, err = sys.stdout, sys.stderr
        code = main(*args, **kwargs)
        if sys.stdout is out:
            return code
        stray = sys.stdout
        sys.stdout = out
        if isinstance(stray, io.StringIO):
            out.write(stray.getvalue())
            out.flush()
        print(f"error: sys.stdout was replaced during the run (by {type(stray).__name__}) and not put back: "
              "output may be missing above; failing the run", file=err, flush=True)
        return code or 1

    return run
