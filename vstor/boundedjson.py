"""JSON from other processes, parsed with a bound on nesting.

``json.loads`` of ``[[[[...]]]]`` nested deeper than the interpreter's recursion limit raises
RecursionError, whose text ("maximum recursion depth exceeded ...") means nothing to whoever
sent it. :func:`loads` turns that, and any nesting deeper than ``max_depth``, into
:class:`TooDeep`, a ValueError with a clear message. The control socket and the replication
wire parse with it.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32  # requests and frames nest a few levels; nothing legitimate comes near this


class TooDeep(ValueError):
    """The document nests arrays and objects deeper than allowed."""


def loads(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``data``; raise TooDeep past ``max_depth`` levels, ValueError if it is not JSON."""
    try:
        obj = json.loads(data)
    except RecursionError:
        raise TooDeep(f"nested too deeply (more than {max_depth} levels)") from None
    if depth(obj) > max_depth:
        raise TooDeep(f"nested too deeply (more than {max_depth} levels)")
    return obj


def depth(obj: Any) -> int:
    """How many arrays and objects nest in ``obj`` (0 for a scalar); iterative, any depth."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in item)
    return deepest
