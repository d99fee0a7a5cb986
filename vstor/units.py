"""Parsing and printing of sizes given by users ("20G", "64K", "512KiB")."""

from __future__ import annotations

import re
from fractions import Fraction

from vstor.errors import UsageError

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE_RE = re.compile(r"^\s*(-?)(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)
_SUFFIXES = ("P", "T", "G", "M", "K")  # largest first
MAX_DECIMALS = 2  # format_size shows at most this many digits after the point


def parse_size(text: str, what: str = "size") -> int:
    """Parse a binary size: a number with an optional K, M, G, T or P (powers of 1024), optionally
    followed by B or iB ("512K", "1.5G", "64MiB"). Exact: "1.25G" is 1342177280 bytes; a value that
    is not a whole number of bytes is refused. Accepts everything :func:`format_size` prints.
    Raises UsageError (one line, no traceback), also for a negative size."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UsageError(f"invalid {what} {text!r}: use a number with an optional K, M, G, T or P suffix, "
                         "like 20G")
    if m.group(1):
        raise UsageError(f"invalid {what} {text!r}: a size cannot be negative")
    value = Fraction(m.group(2)) * _UNITS[m.group(3).upper()]
    if value.denominator != 1:
        raise UsageError(f"invalid {what} {text!r}: not a whole number of bytes")
    return int(value)


def format_size(n: int | float, approx: bool = False) -> str:
    """A byte count in the largest unit that shows it exactly with at most two decimals
    (1536 -> "1.5K", 1 << 50 -> "1P", 4096 * 3 -> "12K"); a count that no unit shows exactly
    that way is printed in bytes ("1000001"). So ``parse_size(format_size(n)) == n`` for every
    whole n >= 0; negative n (a difference) gets a leading "-".

    ``approx``: for measured figures (space used, free, allocated), where a byte count is noise:
    shown in the largest unit it reaches, exactly if that takes at most two decimals, else
    rounded to one decimal and marked "~" ("~77.5G", never "80817412K")."""
    n = int(n)
    if n < 0:
        return "-" + format_size(-n, approx)
    scale = 10 ** MAX_DECIMALS
    for suffix in _SUFFIXES:
        unit = _UNITS[suffix]
        if n < unit:
            continue
        if (n * scale) % unit == 0:
            whole, rest = divmod(n, unit)
            if not rest:
                return f"{whole}{suffix}"
            frac = str(rest * scale // unit).rjust(MAX_DECIMALS, "0").rstrip("0")
            return f"{whole}.{frac}{suffix}"
        if approx:
            return f"~{n / unit:.1f}{suffix}"
    return str(n)


def yes_no(flag: object) -> str:
    return "yes" if flag else "no"


def on_off(flag: object) -> str:
    return "on" if flag else "off"


_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, what: str = "duration") -> int:
    """Parse "90s", "15m", "2h", "1d" or "1w" (a bare number is seconds). Raises UsageError."""
    m = _DURATION_RE.match(str(text))
    if not m:
        raise UsageError(f"invalid {what} {text!r}: use a whole number with s, m, h, d or w, like 15m")
    return int(m.group(1)) * _SECONDS[m.group(2).lower()]
