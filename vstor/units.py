"""Parsing and printing of sizes given by users ("20G", "64K", "512KiB")."""

from __future__ import annotations

import re

from vstor.errors import UsageError

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str, what: str = "size") -> int:
    """Parse a binary size; K/M/G/T/P are powers of 1024. Raises UsageError."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UsageError(f"invalid {what} {text!r}: use a number with an optional K, M, G or T suffix")
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if value != int(value):
        raise UsageError(f"invalid {what} {text!r}: not a whole number of bytes")
    return int(value)


def format_size(n: int | float) -> str:
    """Human-readable binary size: 1536 -> '1.5K'."""
    n = float(n)
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or suffix == "T":
            return f"{n:.0f}{suffix}" if suffix == "" or n == int(n) else f"{n:.1f}{suffix}"
        n /= 1024
    return f"{n:.1f}P"


_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, what: str = "duration") -> int:
    """Parse "90s", "15m", "2h", "1d" or "1w" (a bare number is seconds). Raises UsageError."""
    m = _DURATION_RE.match(str(text))
    if not m:
        raise UsageError(f"invalid {what} {text!r}: use a whole number with s, m, h, d or w, like 15m")
    return int(m.group(1)) * _SECONDS[m.group(2).lower()]
