"""Times as Nomad's JSON writes them: RFC3339 with nanoseconds (Go's time.Time), and back."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["parse_rfc3339", "rfc3339"]


def rfc3339(ns: int) -> str:
    """Unix nanoseconds as RFC3339 in UTC with nanoseconds (Go's time.Time in JSON)."""
    secs, frac = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:09d}Z" if frac else f"{base}Z"


def parse_rfc3339(text: str | None) -> int | None:
    """RFC3339 (up to nanoseconds) to Unix nanoseconds; None for empty, unparseable or Go's zero time."""
    if not text:
        return None
    s = text.strip().replace("Z", "+00:00")
    frac_ns = 0
    if "." in s:   # Python's fromisoformat takes 6 fraction digits at most
        head, _, rest = s.partition(".")
        digits = rest[:len(rest) - len(rest.lstrip("0123456789"))]
        frac_ns = int((digits + "000000000")[:9])
        s = head + rest[len(digits):]
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    if dt.year < 1971:
        return None
    return int(dt.timestamp()) * 1_000_000_000 + frac_ns
