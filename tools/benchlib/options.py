"""Command-line options every benchmark tool shares, and their checks (one clear line on bad input)."""

from __future__ import annotations

import argparse
from collections.abc import Collection

from vstor.errors import UsageError
from vstor.units import parse_size

__all__ = ["add_common", "choices", "size"]


def add_common(p: argparse.ArgumentParser, page_reporting: bool = True) -> None:
    """--workdir, --json-out and (unless the tool leaves it to make bench) --keep-page-reporting."""
    p.add_argument("--workdir", default="/var/tmp", help="where the temporary directory goes")
    p.add_argument("--json-out", help="also write the results as JSON to this file")
    if page_reporting:
        p.add_argument("--keep-page-reporting", action="store_true",
                       help="leave the VM's free page reporting on (by default it is held off for the run: "
                            "benchlib/hostmem.py)")


def size(p: argparse.ArgumentParser, text: str, what: str = "size") -> int:
    """``text`` as bytes (4G, 512M, ...), or the parser's one-line error."""
    try:
        return parse_size(text, what)
    except UsageError as e:
        p.error(str(e))


def choices(p: argparse.ArgumentParser, text: str, allowed: Collection[str], what: str) -> list[str]:
    """A comma list, each item one of ``allowed``, or the parser's one-line error naming them."""
    out = [t for t in text.split(",") if t]
    for t in out:
        if t not in allowed:
            p.error(f"unknown {what} {t!r}: choose from {', '.join(allowed)}")
    return out
