"""Durations as Nomad stores them: integer nanoseconds, written "30s", "1h30m" in job files."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

NS = 1
US = 1_000
MS = 1_000_000
SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

_UNITS = {"ns": NS, "us": US, "µs": US, "μs": US, "ms": MS, "s": SECOND, "m": MINUTE, "h": HOUR}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> int:
    """Parse a Go duration string ("1h30m", "10s", "250ms", "0") to nanoseconds.

    Raises ValueError with a message that says what a valid duration looks like.
    """
    s = text.strip()
    if s in ("0", "-0", "+0"):
        return 0
    sign = 1
    if s[:1] in ("+", "-"):   # ("" in "+-" would be true)
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if not s:
        raise ValueError(f'invalid duration "{text}": use a number with a unit, like "30s", "5m" or "1h30m"')
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            if re.fullmatch(r"\d+(\.\d+)?", s):
                raise ValueError(f'invalid duration "{text}": missing unit, write "{s}s" for seconds '
                                 '(units: ns, us, ms, s, m, h)')
            raise ValueError(f'invalid duration "{text}": use a number with a unit, like "30s", "5m" or "1h30m"')
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * round(total)


def format_duration(ns: int) -> str:
    """Nanoseconds back to a short Go-style string (90_000_000_000 -> "1m30s")."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < SECOND:
        for unit, size in (("ms", MS), ("us", US)):
            if ns >= size and ns % size == 0:
                return f"{sign}{ns // size}{unit}"
        return f"{sign}{ns}ns"
    out = ""
    h, rem = divmod(ns, HOUR)
    m, rem = divmod(rem, MINUTE)
    if h:
        out += f"{h}h"
    if m:
        out += f"{m}m"
    if rem or not out:
        secs = rem / SECOND
        out += (f"{secs:.9f}".rstrip("0").rstrip(".") if rem % SECOND else str(rem // SECOND)) + "s"
    return sign + out


def _coerce(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


DURATION_VALIDATOR = BeforeValidator(_coerce)
Duration = Annotated[int, DURATION_VALIDATOR]
"""A duration in nanoseconds; accepts integers (Nomad JSON) and strings like "30s" (job files)."""
